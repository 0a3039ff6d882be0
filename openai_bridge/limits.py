"""The request body size limit, as pure ASGI middleware.

A body over `MILLM_MAX_REQUEST_BYTES` is refused with 413 before the routes parse
it: at once when its Content-Length says so, otherwise (chunked, or a length
that lies) as soon as the bytes received pass the limit. WebSockets pass through.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openai_bridge.errors import error_answer, error_body

# Routes that stream a large raw body on to the service, which enforces its own
# limits as the bytes arrive: the training corpus upload
# (`management/training.py`, `request.stream()`).
EXEMPT = frozenset({("POST", "/api/v1/training/corpora")})


class _BodyTooLarge(Exception):
    """Raised from `receive` once the body passes the limit."""


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in EXEMPT:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            # Once over, whatever the route made of the error (FastAPI turns a failed
            # body read into its own 400) is dropped for the 413.
            if over and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            # Whatever the route raised over the cut-off body, the answer is the 413.
            if not over or started:
                raise
        if over and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = error_body(
            f"The request body is larger than {self.max_bytes} bytes, this server's limit "
            "(MILLM_MAX_REQUEST_BYTES). Send less per request.",
            "invalid_request_error",
            None,
            "request_too_large",
        )
        # `error_answer`: the one exit of every error answer, so the 413 is logged too.
        await error_answer(scope, 413, body)(scope, receive, send)
