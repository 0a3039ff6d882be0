"""Pure ASGI middleware (no BaseHTTPMiddleware: it breaks disconnect detection)."""

from __future__ import annotations

import base64
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


# The API key's routes: the APIs, and the API's own description (it lists every route).
_PROTECTED = re.compile(r"^/((v1|api)(/|$)|docs(/|$)|redoc$|openapi\.json$)")
_METRICS = "/metrics"
# WebSocket subprotocols: browsers cannot set headers on a WebSocket, and a key in
# the URL ends up in access logs, proxies and browser history; the one header a page
# may set is `Sec-WebSocket-Protocol`. The client offers `millm.v1` and, with a key,
# `millm.key.<base64url(key)>` (base64url without padding, since a subprotocol must
# be an HTTP token and a key may hold any character); the server only ever selects
# `millm.v1`, so the key is never echoed back.
SUBPROTOCOL = "millm.v1"
KEY_SUBPROTOCOL_PREFIX = "millm.key."


async def refuse(error: InferenceError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answers `error` in OpenAI JSON; a WebSocket is refused before its handshake
    completes, with the same JSON where the server supports denial responses, else
    close code 1008."""
    response = error_response(error, scope)
    if scope["type"] == "http":
        await response(scope, receive, send)
    elif "websocket.http.response" in scope.get("extensions", {}):
        await WebSocket(scope, receive, send).send_denial_response(response)
    else:
        await WebSocket(scope, receive, send).close(1008)


def key_from_subprotocols(subprotocols: list[str]) -> bytes | None:
    """The key a WebSocket client offered as `millm.key.<base64url>`, if any."""
    for offered in subprotocols:
        if offered.startswith(KEY_SUBPROTOCOL_PREFIX):
            encoded = offered[len(KEY_SUBPROTOCOL_PREFIX) :]
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            except ValueError:
                return b""
    return None


class ApiKeyMiddleware:
    """Requires the API key on /v1/*, /api/*, the API docs and (unless `metrics_public`)
    /metrics; the UI and /health stay open.

    The key comes as `Authorization: Bearer <key>`; a WebSocket from a browser, which
    cannot set that header, offers it as a subprotocol instead (see `SUBPROTOCOL`).
    `?api_key=` is refused with a 401 saying so: a key in a URL leaks into logs.
    """

    def __init__(self, app: ASGIApp, api_key: str, *, metrics_public: bool = False) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()
        self._metrics_public = metrics_public

    def _protects(self, path: str) -> bool:
        if path == _METRICS:
            return not self._metrics_public
        return _PROTECTED.match(path) is not None

    def _presented(self, scope: Scope) -> bytes:
        given = Headers(scope=scope).get("authorization", "").encode()
        if not given and scope["type"] == "websocket":
            key = key_from_subprotocols(scope.get("subprotocols", []))
            if key is not None:
                given = b"Bearer " + key
        return given

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] in ("http", "websocket")
            and self._protects(scope["path"])
            and not hmac.compare_digest(self._presented(scope), self._expected)
        ):
            message = "Missing or invalid API key; send it as `Authorization: Bearer <key>`"
            if "api_key" in QueryParams(scope.get("query_string", b"")):
                message += (
                    "; `?api_key=` is no longer accepted (a key in a URL ends up in logs):"
                    " a browser WebSocket offers the subprotocols"
                    " `millm.v1, millm.key.<base64url(key)>` instead."
                )
            else:
                message += " (browser WebSockets: the subprotocol `millm.key.<base64url(key)>`)."
            error = InferenceError(grpc.StatusCode.UNAUTHENTICATED, None, message)
            await refuse(error, scope, receive, send)
            return
        await self.app(scope, receive, send)


class SubprotocolMiddleware:
    """Selects `millm.v1` for a WebSocket client that offers it (a browser fails the
    connection when it offered subprotocols and none is selected), and hides the key
    subprotocol from the routes, so no route can echo or log it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        offered = [
            p for p in scope.get("subprotocols", []) if not p.startswith(KEY_SUBPROTOCOL_PREFIX)
        ]
        scope = {**scope, "subprotocols": offered}

        async def send_selecting(message: Message) -> None:
            if (
                message["type"] == "websocket.accept"
                and message.get("subprotocol") is None
                and SUBPROTOCOL in offered
            ):
                message = {**message, "subprotocol": SUBPROTOCOL}
            await send(message)

        await self.app(scope, receive, send_selecting)


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
                "ORIGIN_REFUSED",
                f"Browser pages from {origin} may not call this API; list the origin"
                " in MILLM_CORS_ORIGINS to allow them.",
            )
            await error_response(refused, scope)(scope, receive, send)
        elif self._enabled:
            await super().__call__(scope, receive, send)
        else:
            await self.app(scope, receive, send)
