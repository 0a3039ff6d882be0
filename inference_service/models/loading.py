"""From a cached model and a load request to loader settings, options and a memory check."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig

from inference_service.config import BUILTIN_MODEL, InferenceSettings
from inference_service.engine.loader import resolve_source
from inference_service.engine.memory import available_memory, check_fits, estimate_memory
from inference_service.engine.quantization import LoadOptions, validate
from inference_service.models.catalog import CachedModel


def settings_for(base: InferenceSettings, model: CachedModel) -> InferenceSettings:
    """The service settings, pointed at `model`'s files."""
    if model.local_dir is None:
        return base.model_copy(update={"model": BUILTIN_MODEL, "model_id": ""})
    # Downloaded files sit in a folder named after the commit; the id comes from the repo.
    model_id = model.repo_id.split("/")[-1].lower()
    return base.model_copy(update={"model": str(model.local_dir), "model_id": model_id})


def load_options(settings: InferenceSettings, spec: dict[str, Any]) -> LoadOptions:
    options = LoadOptions.from_settings(
        settings,
        dtype=spec.get("dtype"),
        quantization=spec.get("quantization"),
        device=spec.get("device"),
    )
    validate(options)
    return options


def _estimate(settings: InferenceSettings, spec: dict[str, Any], sae_bytes: int):
    options = load_options(settings, spec)
    config = AutoConfig.from_pretrained(resolve_source(settings)[1])
    context = spec.get("context_tokens") or config.max_position_embeddings
    estimate = estimate_memory(config, options, context_tokens=context, sae_bytes=sae_bytes)
    return options, estimate, available_memory(options.resolved_device())


def estimate_for(
    settings: InferenceSettings, spec: dict[str, Any], sae_bytes: int
) -> dict[str, Any]:
    """Fields of EstimateModelMemoryResponse."""
    options, estimate, available = _estimate(settings, spec, sae_bytes)
    return {
        "weights_bytes": estimate.weights_bytes,
        "kv_cache_bytes": estimate.kv_cache_bytes,
        "overhead_bytes": estimate.overhead_bytes,
        "sae_bytes": estimate.sae_bytes,
        "total_bytes": estimate.total_bytes,
        "available_bytes": available,
        "fits": estimate.total_bytes <= available,
        "device": options.resolved_device().type,
    }


def check_memory(
    settings: InferenceSettings, spec: dict[str, Any], allow_overcommit: bool
) -> str | None:
    """Refuses a load that cannot fit (OutOfMemoryError), or returns the overcommit warning."""
    _options, estimate, available = _estimate(settings, spec, 0)
    return check_fits(estimate, available, allow_overcommit=allow_overcommit)
