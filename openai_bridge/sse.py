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
from typing import Any

from starlette.responses import StreamingResponse

from openai_bridge.errors import InferenceError, describe, error_body

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
KEEPALIVE_INTERVAL_S = 10.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def frame(obj: Any) -> bytes:
    return f"data: {dumps(obj)}\n\n".encode()


async def event_stream(
    chunks: AsyncIterator[dict[str, Any]], keepalive_s: float = KEEPALIVE_INTERVAL_S
) -> AsyncIterator[bytes]:
    """Frames `chunks`, interleaves keep-alives, ends with `[DONE]` after success or error."""
    pending: asyncio.Future[dict[str, Any]] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(chunks))
            done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
            if not done:
                yield KEEPALIVE
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                break
            pending = None
            yield frame(chunk)
    except InferenceError as error:
        _, body = describe(error)
        yield frame(body)
    except Exception:
        log.exception("stream failed after it started")
        yield frame(
            error_body("Internal server error; the details are in the bridge log.", "server_error")
        )
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            # Let the cancellation finish inside `chunks`, so the caller can close it.
            with contextlib.suppress(BaseException):
                await pending
    yield DONE


def sse_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
