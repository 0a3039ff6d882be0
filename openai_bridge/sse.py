"""Server-sent events as OpenAI clients read them.

Each event is `data: <compact json>\n\n`; the stream ends with `data: [DONE]\n\n`.
While nothing is produced (a long prefill, a wait in the queue) a `: keep-alive`
comment goes out every few seconds; the SDK's decoder ignores comments. Once the
200 has been sent, an error can only be told in-band: one `data: {"error": ...}`
event, then `[DONE]` (the SDK raises `APIError` on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from starlette.responses import StreamingResponse

from openai_bridge.errors import InferenceError, describe, error_body

log = logging.getLogger(__name__)
T = TypeVar("T")

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
KEEPALIVE_INTERVAL_S = 10.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def frame(obj: Any) -> bytes:
    return f"data: {dumps(obj)}\n\n".encode()


async def paced(
    source: AsyncIterator[T], keepalive_s: float = KEEPALIVE_INTERVAL_S
) -> AsyncIterator[T | None]:
    """The items of `source`, and None whenever it has been quiet for `keepalive_s`
    (time for a keep-alive). On the way out a pending read is cancelled and allowed
    to finish inside `source`, so the caller can close it."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


async def event_stream(
    chunks: AsyncIterator[dict[str, Any]], keepalive_s: float = KEEPALIVE_INTERVAL_S
) -> AsyncIterator[bytes]:
    """Frames `chunks`, interleaves keep-alives, ends with `[DONE]` after success or error."""
    try:
        async for chunk in paced(chunks, keepalive_s):
            yield KEEPALIVE if chunk is None else frame(chunk)
    except InferenceError as error:
        _, body = describe(error)
        yield frame(body)
    except Exception:
        log.exception("stream failed after it started")
        yield frame(
            error_body("Internal server error; the details are in the bridge log.", "server_error")
        )
    yield DONE


def sse_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
