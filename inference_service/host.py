"""Holds the served model through its lifecycle: not loaded, loading, ready, failed.

Servicers ask the host for the engine; while there is none they get a clear
UNAVAILABLE (loading) or FAILED_PRECONDITION (nothing loaded) error.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from inference_service.config import InferenceSettings
from inference_service.engine.engine import Engine
from inference_service.engine.loader import load_model, unload
from inference_service.engine.meter import NO_METER, EngineMeter
from inference_service.engine.quantization import LoadOptions
from inference_service.errors import ModelLoadingError, NoModelLoadedError

log = logging.getLogger(__name__)

# A client told "still loading" retries after this many seconds.
LOADING_RETRY_AFTER_S = 5
# How long a model switch lets running requests finish before cancelling them.
DRAIN_TIMEOUT_S = 30.0


class ModelState(enum.Enum):
    NOT_LOADED = "not_loaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelHost:
    def __init__(
        self,
        settings: InferenceSettings,
        on_state_change: Callable[[ModelState], None] = lambda state: None,
        meter: EngineMeter = NO_METER,
    ) -> None:
        self._settings = settings
        self._on_state_change = on_state_change
        self._meter = meter  # every engine this host builds reports to it
        self._state = ModelState.NOT_LOADED
        self._engine: Engine | None = None
        self.load_error: str | None = None
        # The settings the current model was loaded with (its `model` is the source).
        self.loaded_settings: InferenceSettings | None = None
        self._switch_lock = asyncio.Lock()

    @property
    def base_settings(self) -> InferenceSettings:
        """The settings the service started with; loads derive theirs from these."""
        return self._settings

    @property
    def state(self) -> ModelState:
        return self._state

    @property
    def engine(self) -> Engine | None:
        return self._engine

    def _set_state(self, state: ModelState) -> None:
        self._state = state
        self._on_state_change(state)

    async def load(self) -> None:
        """Loads the configured model at start-up; a failure leaves the state FAILED."""
        try:
            await self.switch(self._settings)
        except Exception:
            log.exception("loading model %r failed", self._settings.model)

    async def switch(
        self, settings: InferenceSettings, options: LoadOptions | None = None
    ) -> float:
        """Serves the model `settings` describe instead of the current one; returns load seconds.

        While this runs, requests get MODEL_LOADING (503 with Retry-After); running
        generations get `DRAIN_TIMEOUT_S` to finish before they are cancelled.
        """
        async with self._switch_lock:
            self._set_state(ModelState.LOADING)
            await self._release_engine()
            started = time.monotonic()
            try:
                loaded = await asyncio.to_thread(load_model, settings, options)
                self._engine = Engine(loaded, settings, self._meter)
            except Exception as exc:
                self.load_error = str(exc)
                self._set_state(ModelState.FAILED)
                raise
            self.loaded_settings = settings
            self.load_error = None
            log.info("serving model %s", loaded.description.id)
            self._set_state(ModelState.READY)
            return time.monotonic() - started

    async def unload(self) -> tuple[int, int]:
        """Stops serving and frees the model; returns resident bytes before and after."""
        async with self._switch_lock:
            before = psutil.Process().memory_info().rss
            await self._release_engine()
            self.loaded_settings = None
            self._set_state(ModelState.NOT_LOADED)
            return before, psutil.Process().memory_info().rss

    async def _release_engine(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        # The count is updated from the lane thread; a short poll keeps this simple.
        while engine.queue_depth and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        engine.shutdown()
        unload(engine.loaded_model)
        del engine

    def require_engine(self) -> Engine:
        if self._engine is not None and self._state is ModelState.READY:
            return self._engine
        if self._state is ModelState.LOADING:
            raise ModelLoadingError(
                "The model is still loading; retry shortly.", retry_after_s=LOADING_RETRY_AFTER_S
            )
        if self._state is ModelState.FAILED:
            raise NoModelLoadedError(
                f"The model failed to load ({self.load_error}); fix the setting MILLM_MODEL "
                "and restart the inference service."
            )
        raise NoModelLoadedError("No model is loaded; load one before sending requests.")

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()


@dataclass(frozen=True)
class ModelStateChanged:
    """A step in the served model's lifecycle (an event)."""

    state: ModelState
    model_id: str  # empty unless READY
    error: str  # empty unless FAILED
