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

from openai_bridge import health
from openai_bridge.config import BridgeSettings
from openai_bridge.errors import install_exception_handlers
from openai_bridge.inference_client import InferenceClient
from openai_bridge.management import models as management_models
from openai_bridge.management import monitoring as management_monitoring
from openai_bridge.management import operations as management_operations
from openai_bridge.management import profiles as management_profiles
from openai_bridge.management import saes as management_saes
from openai_bridge.management import steering as management_steering
from openai_bridge.management import training as management_training
from openai_bridge.management_client import ManagementClient
from openai_bridge.middleware import ApiKeyMiddleware, RequestIdMiddleware
from openai_bridge.openai_api import chat, completions, embeddings, models
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
    client: InferenceClient,
    *,
    management: ManagementClient | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await client.close()

    app = FastAPI(
        title="miLLM OpenAI-compatible API",
        summary="OpenAI REST + SSE, translated to the miLLM inference service.",
        lifespan=lifespan,
    )
    app.state.bridge = BridgeState(
        settings=settings, client=client, clock=clock, management=management
    )
    install_exception_handlers(app)
    for module in (
        chat,
        completions,
        embeddings,
        models,
        health,
        management_models,
        management_operations,
        management_saes,
        management_steering,
        management_profiles,
        management_monitoring,
        management_training,
    ):
        app.include_router(module.router)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(RequestIdMiddleware)
    if ADMIN_WEB_DIR.is_dir():
        # Last, so that it only sees paths no route claimed.
        app.mount("/", AdminWebFiles(directory=ADMIN_WEB_DIR, html=True), name="admin_web")
    return app
