"""Holds the served model through its lifecycle: not loaded, loading, ready, failed.

Servicers ask the host for the engine; while there is none they get a clear
UNAVAILABLE (loading) or FAILED_PRECONDITION (nothing loaded) error.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable

from inference_service.config import InferenceSettings
from inference_service.errors import ModelLoadingError, NoModelLoadedError

log = logging.getLogger(__name__)

# A client told "still loading" retries after this many seconds.
LOADING_RETRY_AFTER_S = 5


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
    ) -> None:
        self._settings = settings
        self._on_state_change = on_state_change
        self._state = ModelState.NOT_LOADED
        self._engine = None  # Engine once READY; typed loosely to keep torch out of import time
        self.load_error: str | None = None

    @property
    def state(self) -> ModelState:
        return self._state

    @property
    def engine(self):
        return self._engine

    def _set_state(self, state: ModelState) -> None:
        self._state = state
        self._on_state_change(state)

    async def load(self) -> None:
        """Loads the configured model off the event loop, then starts serving it."""
        # Imported here so `--help` and settings errors do not wait for torch.
        from inference_service.engine.engine import Engine
        from inference_service.engine.loader import load_model

        self._set_state(ModelState.LOADING)
        try:
            loaded = await asyncio.to_thread(load_model, self._settings)
            self._engine = Engine(loaded, self._settings)
        except Exception as exc:
            log.exception("loading model %r failed", self._settings.model)
            self.load_error = str(exc)
            self._set_state(ModelState.FAILED)
            return
        log.info("serving model %s", loaded.description.id)
        self._set_state(ModelState.READY)

    def require_engine(self):
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
