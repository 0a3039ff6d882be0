"""The bridge's own graceful stop: streams end in time with a truthful error.

On SIGTERM uvicorn stops accepting connections and waits up to
`MILLM_SHUTDOWN_GRACE_S` for open ones, then cuts them: a client would see its
stream stop mid-sentence with no reason. `Draining` is started from uvicorn's
signal handling (see cli.py). From then on new API requests get 503, and a
stream still running shortly before the grace ends sends the OpenAI error event
"the server is shutting down" and closes properly, inside the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

import grpc
from starlette.types import ASGIApp, Receive, Scope, Send

from openai_bridge.errors import InferenceError, error_response

T = TypeVar("T")
SHUTTING_DOWN = "The server is shutting down; retry on another replica or after it restarts."
# Streams are ended this long before the grace runs out, so their last event is sent
# before uvicorn cuts the connection.
_MARGIN_S = 0.5
_API = re.compile(r"^/(v1|api)(/|$)")


def shutting_down() -> InferenceError:
    return InferenceError(grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", SHUTTING_DOWN)


class Draining:
    """Whether the bridge is stopping, and when its streams must be over."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.started = False
        self.expired = asyncio.Event()

    def start(self) -> None:
        """Call on the event loop's thread (uvicorn's signal handler runs there)."""
        if self.started:
            return
        self.started = True
        asyncio.get_running_loop().call_later(max(self.grace_s - _MARGIN_S, 0.0), self.expired.set)


async def until_drained(chunks: AsyncIterator[T], draining: Draining) -> AsyncGenerator[T, None]:
    """The items of `chunks` until the bridge's stop runs out of grace; then raises
    the shutting-down error, which the stream's framing sends as its last event."""
    expired = asyncio.ensure_future(draining.expired.wait())
    item: asyncio.Future[T] | None = None
    try:
        while True:
            item = asyncio.ensure_future(anext(chunks))
            await asyncio.wait({item, expired}, return_when=asyncio.FIRST_COMPLETED)
            if not item.done():
                raise shutting_down()
            try:
                value = item.result()
            except StopAsyncIteration:
                return
            yield value
    finally:
        expired.cancel()
        if item is not None and not item.done():
            # Let the cancellation finish inside `chunks` before it is closed (also
            # when this generator itself is cancelled: the client left).
            item.cancel()
            with contextlib.suppress(BaseException):
                await item
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


class DrainingMiddleware:
    """New API requests get 503 once the bridge is stopping (the UI and /health stay)."""

    def __init__(self, app: ASGIApp, draining: Draining) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.draining.started and _API.match(scope["path"]):
            await error_response(shutting_down(), scope)(scope, receive, send)
            return
        await self.app(scope, receive, send)
