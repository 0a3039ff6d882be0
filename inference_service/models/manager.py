"""Which model is served: estimates, loads, unloads and deletes over the cache and the host.

A load is refused before the served model is touched: the cached files must be ready,
the options valid (`engine/quantization.py`) and the estimate within free memory
(`engine/memory.py`) unless the caller allows an overcommit.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from transformers import AutoConfig

from inference_service.config import BUILTIN_MODEL, InferenceSettings
from inference_service.engine.loader import resolve_source
from inference_service.engine.memory import (
    MemoryEstimate,
    available_memory,
    check_fits,
    estimate_memory,
)
from inference_service.engine.quantization import LoadOptions, validate
from inference_service.errors import InvalidArgumentError
from inference_service.host import ModelHost
from inference_service.models.catalog import CachedModel, ModelCatalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadSpec:
    """How to load a cached model; a None option keeps the service's setting.

    The options arrive unchecked from clients; `validate` names a bad one
    (InvalidArgumentError / UnsupportedError) before any weight is read.
    """

    model_id: str
    dtype: str | None = None
    quantization: str | None = None  # None: the service's setting
    device: str | None = None
    context_tokens: int | None = None  # the KV-cache estimate's plan; None: the model's own
    allow_overcommit: bool = False  # load with a warning when the estimate does not fit


@dataclass(frozen=True)
class LoadEstimate:
    """The memory a load needs against what is free on its device now."""

    memory: MemoryEstimate
    available_bytes: int
    device: str  # the device type, such as "cpu"

    @property
    def fits(self) -> bool:
        return self.memory.total_bytes <= self.available_bytes


@dataclass(frozen=True)
class LoadResult:
    model: CachedModel
    load_s: float
    warning: str | None  # why the load may not fit, when an overcommit was allowed


class ModelManager:
    def __init__(self, host: ModelHost, catalog: ModelCatalog) -> None:
        self._host = host
        self._catalog = catalog

    def is_loaded(self, model: CachedModel) -> bool:
        loaded = self._host.loaded_settings
        return loaded is not None and loaded.model == _source(model)

    async def estimate(self, spec: LoadSpec, sae_bytes: int = 0) -> LoadEstimate:
        model = await asyncio.to_thread(self._catalog.get, spec.model_id)
        settings = _settings_for(self._host.base_settings, model)
        options = _options(settings, spec)
        return await asyncio.to_thread(_estimate, settings, options, spec, sae_bytes)

    async def load(self, spec: LoadSpec) -> LoadResult:
        """Serves the cached model `spec` names instead of the current one."""
        model = await asyncio.to_thread(self._catalog.get, spec.model_id)
        if model.state != "ready":
            raise InvalidArgumentError(
                f"'{model.id}' is {model.state}, not ready; download it again before loading.",
                param="id",
            )
        settings = _settings_for(self._host.base_settings, model)
        options = _options(settings, spec)
        estimate = await asyncio.to_thread(_estimate, settings, options, spec, 0)
        warning = check_fits(
            estimate.memory, estimate.available_bytes, allow_overcommit=spec.allow_overcommit
        )
        if warning:
            log.warning("loading %s although it may not fit: %s", model.id, warning)
        load_s = await self._host.switch(settings, options)
        return LoadResult(model, load_s, warning)

    async def unload(self) -> tuple[int, int]:
        """Stops serving; returns the resident bytes before and after."""
        return await self._host.unload()

    async def delete(self, model_id: str) -> int:
        """Deletes a cached model that is not being served; returns the bytes freed."""
        loaded = self._host.loaded_settings
        return await asyncio.to_thread(
            self._catalog.delete, model_id, loaded.model if loaded is not None else None
        )


def _source(model: CachedModel) -> str:
    """What the loader reads `model` from (the `model` setting)."""
    return BUILTIN_MODEL if model.local_dir is None else str(model.local_dir)


def _settings_for(base: InferenceSettings, model: CachedModel) -> InferenceSettings:
    """The service settings, pointed at `model`'s files."""
    # Downloaded files sit in a folder named after the commit; the id comes from the repo.
    model_id = model.repo_id.split("/")[-1].lower() if model.local_dir is not None else ""
    return base.model_copy(update={"model": _source(model), "model_id": model_id})


def _options(settings: InferenceSettings, spec: LoadSpec) -> LoadOptions:
    options = LoadOptions.from_settings(
        settings, dtype=spec.dtype, quantization=spec.quantization, device=spec.device
    )
    validate(options)
    return options


def _estimate(
    settings: InferenceSettings, options: LoadOptions, spec: LoadSpec, sae_bytes: int
) -> LoadEstimate:
    """Reads the model's config (no weights) and the free memory of its device."""
    config = AutoConfig.from_pretrained(resolve_source(settings)[1])
    memory = estimate_memory(
        config,
        options,
        context_tokens=spec.context_tokens or config.max_position_embeddings,
        sae_bytes=sae_bytes,
    )
    device = options.resolved_device()
    return LoadEstimate(memory, available_memory(device), device.type)
