"""Pure translation between ModelService messages and the models domain's types."""

from __future__ import annotations

from inference_service.errors import InvalidArgumentError
from inference_service.hub.files import WeightFormat
from inference_service.models.catalog import CachedModel
from inference_service.models.manager import LoadEstimate, LoadSpec
from millm.v1 import model_service_pb2

_WEIGHT_FORMATS: dict[str, int] = {
    "safetensors": model_service_pb2.WEIGHT_FORMAT_SAFETENSORS,
    "pytorch": model_service_pb2.WEIGHT_FORMAT_PYTORCH,
    "gguf": model_service_pb2.WEIGHT_FORMAT_GGUF,
}
_CACHED_STATES = {
    "downloading": model_service_pb2.CACHED_MODEL_STATE_DOWNLOADING,
    "ready": model_service_pb2.CACHED_MODEL_STATE_READY,
    "corrupted": model_service_pb2.CACHED_MODEL_STATE_CORRUPTED,
    "missing": model_service_pb2.CACHED_MODEL_STATE_MISSING,
}


# The formats a download can ask for; a GGUF file is served, never downloaded.
_DOWNLOADABLE: dict[int, WeightFormat] = {
    model_service_pb2.WEIGHT_FORMAT_SAFETENSORS: "safetensors",
    model_service_pb2.WEIGHT_FORMAT_PYTORCH: "pytorch",
}


def weight_format(value: int) -> WeightFormat | None:
    """The domain name of a requested WeightFormat; None for 'no preference'."""
    if value == model_service_pb2.WEIGHT_FORMAT_UNSPECIFIED:
        return None
    if value not in _DOWNLOADABLE:
        raise InvalidArgumentError(
            "A download takes safetensors or pytorch weights; leave `format` unset"
            " to take what the repository has.",
            param="format",
        )
    return _DOWNLOADABLE[value]


def cached_model(model: CachedModel, *, loaded: bool) -> model_service_pb2.CachedModel:
    return model_service_pb2.CachedModel(
        id=model.id,
        repo_id=model.repo_id,
        revision=model.revision,
        commit_sha=model.commit_sha,
        format=_WEIGHT_FORMATS.get(model.format, model_service_pb2.WEIGHT_FORMAT_UNSPECIFIED),
        parameter_count=model.parameter_count,
        size_bytes=model.size_bytes,
        state=_CACHED_STATES[model.state],
        loaded=loaded,
    )


_QUANTIZATIONS = {
    model_service_pb2.QUANTIZATION_NONE: "none",
    model_service_pb2.QUANTIZATION_INT8_DYNAMIC: "int8_dynamic",
    model_service_pb2.QUANTIZATION_BNB_8BIT: "bnb_8bit",
    model_service_pb2.QUANTIZATION_BNB_4BIT: "bnb_4bit",
    model_service_pb2.QUANTIZATION_INT8_WEIGHT: "int8_weight",
    model_service_pb2.QUANTIZATION_AUTO: "auto",
    model_service_pb2.QUANTIZATION_INT4_WEIGHT: "int4_weight",
}


def load_spec(
    model_id: str, spec: model_service_pb2.LoadSpec, *, allow_overcommit: bool = False
) -> LoadSpec:
    """Empty and zero fields keep the service's settings (see LoadSpec in the proto)."""
    return LoadSpec(
        model_id=model_id,
        dtype=spec.dtype or None,
        quantization=_QUANTIZATIONS.get(spec.quantization),
        device=spec.device or None,
        context_tokens=spec.context_tokens or None,
        allow_overcommit=allow_overcommit,
    )


def memory_estimate(estimate: LoadEstimate) -> model_service_pb2.EstimateModelMemoryResponse:
    memory = estimate.memory
    return model_service_pb2.EstimateModelMemoryResponse(
        weights_bytes=memory.weights_bytes,
        kv_cache_bytes=memory.kv_cache_bytes,
        overhead_bytes=memory.overhead_bytes,
        sae_bytes=memory.sae_bytes,
        total_bytes=memory.total_bytes,
        available_bytes=estimate.available_bytes,
        fits=estimate.fits,
        device=estimate.device,
    )
