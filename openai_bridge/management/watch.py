"""The WebSockets of /api/v1: the watches (operations, training runs) relay frames until
done, and every socket reports an error the same way.

One text frame per update; close 1000 after the last. On an error: one
`{"type": "error", "error": {...}}` frame, then close 1008 (a 4xx in the error
table, such as not found) or 1011 (a 5xx). A client that leaves cancels the gRPC
watch at once, even between updates; frames it sends are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from openai_bridge import proto_json
from openai_bridge.errors import InferenceError, describe
from openai_bridge.grpc_calls import ServiceCalls
from openai_bridge.state import service_calls

log = logging.getLogger(__name__)

UNEXPECTED = "Internal server error; the details are in the bridge log."

# WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011

# Opens the watch and yields its frames as text. Closing it (`aclose`) must cancel
# the gRPC call.
FrameSource = Callable[[ServiceCalls], AsyncIterator[str]]

Update = TypeVar("Update")


async def until_final(
    updates: AsyncIterator[Update], is_final: Callable[[Update], bool], what: str
) -> AsyncIterator[Update]:
    """Yields `updates` up to the first final one. The service ending the stream
    before that is an error; closing this closes `updates` (cancelling the call)."""
    async with contextlib.aclosing(updates):  # type: ignore[type-var]
        async for update in updates:
            yield update
            if is_final(update):
                return
    raise InferenceError(
        grpc.StatusCode.INTERNAL,
        "INTERNAL",
        f"The inference service ended the watch before the {what} finished.",
    )


async def relay(websocket: WebSocket, frames: FrameSource, what: str) -> None:
    """Accepts `websocket` and sends it `frames` until they end, fail, or the client goes.

    `what` names the watched thing in the log ("operation 5f0c6a1e").
    """
    await websocket.accept()
    try:
        calls = await service_calls(websocket)
    except InferenceError as exc:
        await report(websocket, exc, what)
        return
    pump = asyncio.create_task(_send_frames(websocket, calls, frames, f"watching {what}"))
    listen = asyncio.create_task(_until_disconnected(websocket))
    try:
        await asyncio.wait({pump, listen}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pump, listen):
            task.cancel()
        await asyncio.gather(pump, listen, return_exceptions=True)


async def _send_frames(
    websocket: WebSocket, calls: ServiceCalls, frames: FrameSource, what: str
) -> None:
    try:
        texts = frames(calls)
        try:
            async for text in texts:
                await websocket.send_text(text)
        finally:
            await texts.aclose()  # type: ignore[attr-defined]
        await websocket.close(CLOSE_NORMAL)
    except WebSocketDisconnect:
        return
    except Exception as exc:
        await report(websocket, exc, what)


async def report(websocket: WebSocket, exc: Exception, what: str) -> None:
    """Sends the error frame for `exc` and closes; anything not an `InferenceError` is
    logged and reported as an internal error."""
    if not isinstance(exc, InferenceError):
        log.error("%s failed", what, exc_info=exc)
        exc = InferenceError(grpc.StatusCode.INTERNAL, None, UNEXPECTED)
    frame, close_code = error_frame(exc)
    try:
        await websocket.send_text(frame)
        await websocket.close(close_code)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client left meanwhile


def error_frame(error: InferenceError) -> tuple[str, int]:
    """The error frame (the OpenAI error object) and the close code that follows it.

    A client error (HTTP 4xx in the error table: not found, bad id, no API key)
    closes with 1008; a server error with 1011.
    """
    row, body = describe(error)
    close_code = CLOSE_POLICY_VIOLATION if row.status < 500 else CLOSE_INTERNAL_ERROR
    return proto_json.compact({"type": "error", **body}), close_code


async def _until_disconnected(websocket: WebSocket) -> None:
    """Reads (and ignores) client frames until the client goes; then the watch is cancelled."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
