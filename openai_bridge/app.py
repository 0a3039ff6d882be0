"""The FastAPI application: routes, error handlers, middleware and the admin UI."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from openai_bridge import health
from openai_bridge.browser_guard import JsonBodyMiddleware, OriginGuardMiddleware
from openai_bridge.config import BridgeSettings
from openai_bridge.draining import Draining, DrainingMiddleware
from openai_bridge.errors import install_exception_handlers
from openai_bridge.limits import BodyLimitMiddleware
from openai_bridge.management import events as management_events
from openai_bridge.management import features as management_features
from openai_bridge.management import models as management_models
from openai_bridge.management import monitoring as management_monitoring
from openai_bridge.management import operations as management_operations
from openai_bridge.management import profiles as management_profiles
from openai_bridge.management import saes as management_saes
from openai_bridge.management import steering as management_steering
from openai_bridge.management import training as management_training
from openai_bridge.metrics import METRICS_PATH, BridgeMetrics, MetricsMiddleware
from openai_bridge.middleware import (
    ApiKeyMiddleware,
    CorsMiddleware,
    RequestIdMiddleware,
    SubprotocolMiddleware,
)
from openai_bridge.openai_api import chat, completions, embeddings, models, responses
from openai_bridge.openapi import document_openai_errors
from openai_bridge.services import Services
from openai_bridge.state import BridgeState

# The repository's admin_web/ folder, next to this package.
ADMIN_WEB_DIR = Path(__file__).resolve().parent.parent / "admin_web"


class AdminWebFiles(StaticFiles):
    """The admin UI's files, revalidated on every load (`no-cache`; a 304 when
    unchanged): its ES modules import each other, and a browser that kept some
    from before an upgrade would run a mix of two versions."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def create_app(
    settings: BridgeSettings,
    *,
    clock: Callable[[], float] = time.time,
    draining: Draining | None = None,
) -> FastAPI:
    # One connection to each inference service for every route.
    services = Services.connect(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await services.close()

    app = FastAPI(
        title="miLLM OpenAI-compatible API",
        summary="OpenAI REST + SSE, translated to the miLLM inference service.",
        lifespan=lifespan,
        # `/v1/models/` is an unknown route (404), not a redirect: one answer per path.
        redirect_slashes=False,
    )
    draining = draining or Draining(settings.shutdown_grace_s)
    app.state.bridge = BridgeState(
        settings=settings, services=services, clock=clock, draining=draining
    )
    metrics = BridgeMetrics()
    app.state.metrics = metrics
    install_exception_handlers(app)
    document_openai_errors(app)
    routers = (
        chat,
        completions,
        embeddings,
        models,
        responses,
        health,
        management_models,
        management_operations,
        management_saes,
        management_features,
        management_steering,
        management_profiles,
        management_monitoring,
        management_training,
        management_events,
    )
    for module in routers:
        app.include_router(module.router)
    app.add_route(METRICS_PATH, metrics.endpoint, methods=["GET"], include_in_schema=False)
    # The last added runs first: metrics count every answer, refusals included; the
    # request id covers everything else; CORS answers preflights before the key is
    # asked for and adds its headers to 401s; other origins' pages are refused
    # whatever the key; the key is read from the WebSocket subprotocols before they
    # are hidden from the routes.
    app.add_middleware(DrainingMiddleware, draining=draining)
    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(SubprotocolMiddleware)
    if settings.api_key:
        app.add_middleware(
            ApiKeyMiddleware, api_key=settings.api_key, metrics_public=settings.metrics_public
        )
    app.add_middleware(OriginGuardMiddleware, origins=settings.cors_origins)
    app.add_middleware(CorsMiddleware, origins=settings.cors_origins)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(
        MetricsMiddleware,
        metrics=metrics,
        # The app's own routes (docs, /metrics), then every router's, in routing order.
        routes=[
            *(route for route in app.router.routes if hasattr(route, "path")),
            *(route for module in routers for route in module.router.routes),
        ],
        ui=ADMIN_WEB_DIR.is_dir(),
    )
    if ADMIN_WEB_DIR.is_dir():
        app.router.default = _admin_ui_fallback(
            AdminWebFiles(directory=ADMIN_WEB_DIR, html=True), app.router.not_found
        )
    return app


def _admin_ui_fallback(files: ASGIApp, not_found: ASGIApp) -> ASGIApp:
    """What the router runs for a path no route claims: the admin UI's files for GET
    and HEAD, the 404 for the rest. Not a mount at "/": a mount claims every path and
    method, so `POST /v1/unknown` got the files' 405 and a wrong method on a real
    route got their 404, where clients need 404 and 405 naming the route's methods."""

    async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            await files(scope, receive, send)
        else:
            await not_found(scope, receive, send)

    return fallback
