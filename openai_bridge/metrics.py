"""Prometheus metrics of the bridge: HTTP requests by route template, streams, WebSockets.

`MetricsMiddleware` sits outside every other middleware, so refusals (401, 413,
503 while draining) are counted like answers. Requests are labelled with the
route's template (`/api/v1/saes/{sae_id}`), never the raw path, so ids in paths
cannot grow the series without bound; paths no route claims share one label.
`GET /metrics` serves the registry (docs/metrics.md), with the API key when one is
set unless `MILLM_METRICS_PUBLIC` (see `BridgeSettings.metrics_public`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METRICS_PATH = "/metrics"
# The label of paths no route claims: the admin UI's files (GET/HEAD) and 404s.
ADMIN_UI_ROUTE = "<admin_ui>"
UNMATCHED_ROUTE = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds to the response's end: a JSON answer in milliseconds, a generation's
# stream in seconds to minutes.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class BridgeMetrics:
    """The bridge's registry; one per app, so tests can build many apps."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter(
            "millm_bridge_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "millm_bridge_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its response (a stream's whole "
            "length), by method and route template.",
            ["method", "route"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "millm_bridge_http_requests_in_progress",
            "HTTP requests being answered now (streams included), by method and route.",
            ["method", "route"],
            registry=self.registry,
        )
        self.streams = Gauge(
            "millm_bridge_streams_in_progress",
            "Server-sent-event streams open now (streamed completions, responses), by route.",
            ["route"],
            registry=self.registry,
        )
        self.websockets = Gauge(
            "millm_bridge_websockets_open",
            "WebSocket connections open now (progress, live activations), by route.",
            ["route"],
            registry=self.registry,
        )
        self.websocket_connections = Counter(
            "millm_bridge_websocket_connections",
            "WebSocket connections opened, by route.",
            ["route"],
            registry=self.registry,
        )

    async def endpoint(self, request: Request) -> Response:
        """`GET /metrics`: the text format, or OpenMetrics when the scraper asks for it."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(self.registry), headers={"Content-Type": content_type})


class MetricsMiddleware:
    """Counts and times every HTTP request and WebSocket by its route template.

    `routes` are the app's routes, flattened (FastAPI keeps included routers nested):
    they are matched here, before anything answers, so a request refused before
    routing (401, 413, 503 while draining) is labelled with its route as well."""

    def __init__(
        self, app: ASGIApp, metrics: BridgeMetrics, routes: Sequence[BaseRoute], ui: bool
    ) -> None:
        self.app = app
        self._metrics = metrics
        self._routes = routes
        self._ui = ui  # paths no route claims serve the admin UI's files on GET/HEAD

    def _route(self, scope: Scope) -> str:
        """The template of the route the router will pick; a method mismatch (405) is
        labelled with its route too."""
        partial: str | None = None
        for route in self._routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return str(getattr(route, "path", UNMATCHED_ROUTE))
            if match is Match.PARTIAL and partial is None:
                partial = str(getattr(route, "path", UNMATCHED_ROUTE))
        if partial is not None:
            return partial
        if self._ui and scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            return ADMIN_UI_ROUTE
        return UNMATCHED_ROUTE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self._metrics
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        route = self._route(scope)
        status = 500  # what the server answers if the app raises before responding
        stream: Gauge | None = None

        async def send_counting(message: Message) -> None:
            nonlocal status, stream
            if message["type"] == "http.response.start":
                status = message["status"]
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
                if content_type.startswith("text/event-stream"):
                    stream = metrics.streams.labels(route)
                    stream.inc()
            await send(message)

        in_progress = metrics.in_progress.labels(method, route)
        in_progress.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_counting)
        finally:
            in_progress.dec()
            if stream is not None:
                stream.dec()
            metrics.duration.labels(method, route).observe(time.perf_counter() - started)
            metrics.requests.labels(method, route, str(status)).inc()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope)
        opened: Gauge | None = None

        async def send_counting(message: Message) -> None:
            nonlocal opened
            if message["type"] == "websocket.accept" and opened is None:
                self._metrics.websocket_connections.labels(route).inc()
                opened = self._metrics.websockets.labels(route)
                opened.inc()
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            if opened is not None:
                opened.dec()
