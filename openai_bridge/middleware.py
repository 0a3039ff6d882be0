"""Pure ASGI middleware (no BaseHTTPMiddleware: it breaks disconnect detection)."""

from __future__ import annotations

import hmac
import re
import uuid

import grpc
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openai_bridge.errors import InferenceError, error_response
from openai_bridge.logs import request_id_var

_PROTECTED = re.compile(r"^/(v1|api)(/|$)")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Takes `x-request-id` from the client (or makes one), logs with it, echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex[:16]
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class ApiKeyMiddleware:
    """Requires `Authorization: Bearer <key>` on /v1/* and /api/*; the UI and /health stay open."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and _PROTECTED.match(scope["path"]):
            given = Headers(scope=scope).get("authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                error = InferenceError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    None,
                    "Missing or invalid API key; send it as `Authorization: Bearer <key>`.",
                )
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
