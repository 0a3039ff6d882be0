"""Pure ASGI middleware (no BaseHTTPMiddleware: it breaks disconnect detection)."""

from __future__ import annotations

import hmac
import re
import uuid

import grpc
from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from openai_bridge.errors import InferenceError, error_response
from openai_bridge.logs import request_id_var

_PROTECTED = re.compile(r"^/(v1|api)(/|$)")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Takes `x-request-id` from the client (or makes one), logs with it, echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex[:16]
        token = request_id_var.set(request_id)
        if scope["type"] == "websocket":
            # No response headers to stamp; the id still reaches logs and gRPC metadata.
            try:
                await self.app(scope, receive, send)
            finally:
                request_id_var.reset(token)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class ApiKeyMiddleware:
    """Requires the API key on /v1/* and /api/*; the UI and /health stay open.

    One rule: the key comes as `Authorization: Bearer <key>`; a WebSocket may
    send it as `?api_key=<key>` instead, since browsers cannot set headers on
    one. A refused WebSocket gets the same 401 JSON as HTTP where the server
    supports denial responses, otherwise close code 1008 before the handshake.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    def _presented(self, scope: Scope) -> bytes:
        given = Headers(scope=scope).get("authorization", "")
        if not given and scope["type"] == "websocket":
            query_key = QueryParams(scope.get("query_string", b"")).get("api_key")
            if query_key:
                given = f"Bearer {query_key}"
        return given.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] in ("http", "websocket")
            and _PROTECTED.match(scope["path"])
            and not hmac.compare_digest(self._presented(scope), self._expected)
        ):
            response = error_response(
                InferenceError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    None,
                    "Missing or invalid API key; send it as `Authorization: Bearer <key>`"
                    " (WebSockets may use `?api_key=<key>`).",
                ),
                scope,
            )
            if scope["type"] == "http":
                await response(scope, receive, send)
            elif "websocket.http.response" in scope.get("extensions", {}):
                await WebSocket(scope, receive, send).send_denial_response(response)
            else:
                await WebSocket(scope, receive, send).close(1008)
            return
        await self.app(scope, receive, send)


class CorsMiddleware(CORSMiddleware):
    """Starlette's CORS for the origins in `MILLM_CORS_ORIGINS`, refusals in OpenAI JSON.

    Installed outside `ApiKeyMiddleware`, so it answers preflights itself (a browser
    never sends `Authorization` on one) and its headers reach 401s too. Any method and
    any requested header are allowed (the OpenAI SDK sends a growing set of
    `x-stainless-*`); the origin is what is checked. A preflight from another origin
    gets a 403 without CORS headers; with no origins configured, nothing else is
    touched, so responses carry no CORS headers at all.
    """

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=["*"],
            allow_headers=["*"],
            # The origins were listed on purpose: let their public pages reach a
            # bridge on a private network (Chrome's Private Network Access preflight).
            allow_private_network=True,
            # What a browser client needs to read: the id to quote, when to retry.
            expose_headers=["x-request-id", "Retry-After", "x-should-retry"],
        )
        self._enabled = bool(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        preflight = (
            origin is not None
            and scope["method"] == "OPTIONS"
            and "access-control-request-method" in headers
        )
        if preflight and not self.is_allowed_origin(origin or ""):
            refused = InferenceError(
                grpc.StatusCode.PERMISSION_DENIED,
                "CORS_ORIGIN_REFUSED",
                f"Browser pages from {origin} may not call this API; list the origin"
                " in MILLM_CORS_ORIGINS to allow them.",
            )
            await error_response(refused, scope)(scope, receive, send)
        elif self._enabled:
            await super().__call__(scope, receive, send)
        else:
            await self.app(scope, receive, send)
