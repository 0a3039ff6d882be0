"""POST /v1/responses: OpenAI's Responses API (text and function tools), served by
the chat path and reshaped (`responses_translate`, `responses_stream`).

A stream is server-sent events with an `event: <type>` line before each `data:`
line and no `[DONE]` at the end (the Responses API sends none); keep-alive comments
go out while nothing is produced, as on the chat stream. Errors found before the
stream starts are ordinary HTTP errors; one after it started is an `error` event
followed by `response.failed`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from openai_bridge.draining import until_drained
from openai_bridge.errors import InferenceError, describe, error_body
from openai_bridge.openai_api import chat
from openai_bridge.openai_api import responses_translate as rt
from openai_bridge.openai_api.responses_stream import ResponseEvents
from openai_bridge.sse import KEEPALIVE, KEEPALIVE_INTERVAL_S, dumps, paced, sse_response
from openai_bridge.state import State

log = logging.getLogger(__name__)

router = APIRouter()

Chunks = AsyncGenerator[dict[str, Any], None]


def frame(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {dumps(event)}\n\n".encode()


async def events(
    chunks: Chunks, shaper: ResponseEvents, clock: Callable[[], float]
) -> AsyncGenerator[dict[str, Any], None]:
    """The response's events; an error from the generation becomes events too."""
    try:
        async for chunk in chunks:
            for event in shaper.push(chunk):
                yield event
        for event in shaper.finish(int(clock())):
            yield event
    except InferenceError as error:
        rt.rename(error)
        _, body = describe(error)
        for event in shaper.fail(body["error"]):
            yield event
    except Exception:
        log.exception("response stream failed after it started")
        hidden = error_body(
            "Internal server error; the details are in the bridge log.", "server_error"
        )
        for event in shaper.fail(hidden["error"]):
            yield event


async def framed(
    source: AsyncIterator[dict[str, Any]], keepalive_s: float = KEEPALIVE_INTERVAL_S
) -> AsyncIterator[bytes]:
    """Frames `source`, with a keep-alive comment whenever it is quiet for `keepalive_s`."""
    async for event in paced(source, keepalive_s):
        yield KEEPALIVE if event is None else frame(event)


async def stream_body(
    chunks: Chunks, shaper: ResponseEvents, clock: Callable[[], float]
) -> AsyncIterator[bytes]:
    """The streamed body. Closing the chunks at the end, also when the client left
    (Starlette then cancels this body), cancels the generation."""
    source = events(chunks, shaper, clock)
    try:
        async for data in framed(source):
            yield data
    finally:
        await source.aclose()
        await chunks.aclose()


@router.post("/v1/responses", response_model=None)
async def create_response(body: rt.ResponsesRequest, request: Request, state: State) -> Response:
    chat_body = rt.chat_request(body)
    echoed = rt.echo(body)
    with rt.client_names():
        result = await chat.run_chat(chat_body, request, state)
    if isinstance(result, dict):
        return JSONResponse(rt.from_chat(result, echoed, int(state.clock())))
    chunks = until_drained(result, state.draining)
    return sse_response(stream_body(chunks, ResponseEvents(echoed), state.clock))
