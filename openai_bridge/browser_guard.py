"""Defences against the web pages a user happens to visit (CSRF, cross-site WebSockets).

The bridge usually listens on 127.0.0.1 with no key, so any page open in the user's
browser can reach it. CORS does not stop that: it only keeps a page from *reading*
answers, while "simple" requests (a body-less or `text/plain` POST) go out without a
preflight and still change state, and WebSockets are not subject to CORS at all.
Two rules close that gap, whatever the key setting:

- `OriginGuardMiddleware`: a browser names the page's origin on every such request;
  one that is neither the bridge's own nor listed in `MILLM_CORS_ORIGINS` is refused
  before anything runs. Clients without an `Origin` (curl, SDKs) are not browsers.
- `JsonBodyMiddleware`: a route that reads JSON only takes a JSON content type, which
  a page cannot send cross-origin without a preflight, so a second line of defence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import fastapi.routing
import grpc
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from openai_bridge.errors import InferenceError, error_answer, error_body
from openai_bridge.middleware import refuse

_STATE_CHANGING_PATHS = re.compile(r"^/(v1|api)(/|$)")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A WebSocket's scheme, as the origin of the page that would open it writes it.
_PAGE_SCHEME = {"ws": "http", "wss": "https"}


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    """Whether pages from `origin` may use the API, per `MILLM_CORS_ORIGINS` (`*`: any)."""
    return "*" in allowed or origin in allowed


def own_origin(scope: Scope) -> str:
    """The bridge's origin as the client addressed it: scheme://host[:port] of `Host`.

    `localhost` and `127.0.0.1` stay different origins, as they are to a browser.
    Behind a TLS proxy the scheme comes from uvicorn's forwarded-header handling.
    """
    scheme = _PAGE_SCHEME.get(scope["scheme"], scope["scheme"])
    host = Headers(scope=scope).get("host", "")
    return f"{scheme}://{host}".lower()


class OriginGuardMiddleware:
    """Refuses state-changing calls and WebSockets from other origins' pages (403).

    Reads (GET/HEAD) are left to CORS, which keeps their answers from the page.
    """

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self._origins = origins

    def _guarded(self, scope: Scope) -> bool:
        if scope["type"] == "websocket":
            return True
        return (
            scope["type"] == "http"
            and scope["method"] not in _SAFE_METHODS
            and bool(_STATE_CHANGING_PATHS.match(scope["path"]))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = Headers(scope=scope).get("origin") if self._guarded(scope) else None
        if (
            origin is not None
            and origin.lower() != own_origin(scope)
            and not origin_allowed(origin, self._origins)
        ):
            error = InferenceError(
                grpc.StatusCode.PERMISSION_DENIED,
                "ORIGIN_REFUSED",
                f"Pages from {origin} may not change this server's state or open its"
                " WebSockets; list the origin in MILLM_CORS_ORIGINS to allow them.",
            )
            await refuse(error, scope, receive, send)
            return
        await self.app(scope, receive, send)


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _has_body(headers: Headers) -> bool:
    # Judged from the headers alone: the body itself must stay unread for the route.
    length = headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in headers


def _routes(app: Any) -> Iterable[Any]:
    """Every route of `app`, flat. FastAPI 0.165 keeps included routers as lazy
    entries of `app.routes`; its `iter_route_contexts` yields their routes with the
    include prefix applied (`matches`) and the route itself (`original_route`)."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    return iterate(app.routes) if iterate else app.routes


def _reads_json(scope: Scope) -> bool:
    """Whether the route `scope` goes to declares a JSON body. Routes that take the
    raw body (corpus upload, profile and template import) declare none."""
    for route in _routes(scope["app"]):
        declared = getattr(route, "original_route", route)
        if isinstance(declared, APIRoute) and route.matches(scope)[0] == Match.FULL:
            return declared.body_field is not None
    return False


class JsonBodyMiddleware:
    """A body sent to a JSON route must say it is JSON, or gets 415 naming the header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _BODY_METHODS:
            headers = Headers(scope=scope)
            content_type = headers.get("content-type", "")
            if _has_body(headers) and not is_json(content_type) and _reads_json(scope):
                sent = f"`{content_type}`" if content_type else "none"
                body = error_body(
                    f"Send the body as JSON with `Content-Type: application/json`; got {sent}.",
                    "invalid_request_error",
                    "Content-Type",
                    "unsupported_media_type",
                )
                # `error_answer`: the one exit of every error answer, so the 415 is logged too.
                await error_answer(scope, 415, body)(scope, receive, send)
                return
        await self.app(scope, receive, send)
