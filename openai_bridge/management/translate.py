"""Pure translation for /api/v1: request bodies -> millm.v1 messages, results -> JSON.

No I/O here. JSON conventions (see docs/management-api.md): snake_case keys,
enums as lower-case short names (`WEIGHT_FORMAT_SAFETENSORS` -> "safetensors"),
sizes in bytes, times in Unix milliseconds, and null where the protobuf value
means "unknown" or "none" (an empty string, a 0 that the contract calls unknown,
an unset optional, an UNSPECIFIED enum).
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from millm.v1 import model_service_pb2 as mpb
from millm.v1 import operation_pb2 as opb
from millm.v1 import operations_service_pb2 as ospb
from openai_bridge.errors import InferenceError, describe, invalid_request
from openai_bridge.management.schemas import (
    DownloadBody,
    EstimateBody,
    LoadBody,
    LoadSpecBody,
    QuantizationName,
    WeightFormatName,
)
from openai_bridge.management_client import FINAL_STATES

MAX_PAGE_SIZE = 200

# WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011

_FORMATS: dict[WeightFormatName, int] = {
    "safetensors": mpb.WEIGHT_FORMAT_SAFETENSORS,
    "pytorch": mpb.WEIGHT_FORMAT_PYTORCH,
}
_QUANTIZATIONS: dict[QuantizationName, int] = {
    "none": mpb.QUANTIZATION_NONE,
    "int8_dynamic": mpb.QUANTIZATION_INT8_DYNAMIC,
    "bnb_8bit": mpb.QUANTIZATION_BNB_8BIT,
    "bnb_4bit": mpb.QUANTIZATION_BNB_4BIT,
}


def enum_name(enum: EnumTypeWrapper, value: int, prefix: str) -> str | None:
    """`OPERATION_STATE_RUNNING` -> "running"; UNSPECIFIED or a value unknown here -> None."""
    try:
        name = enum.Name(value)
    except ValueError:
        return None
    short = name.removeprefix(prefix).lower()
    return None if short == "unspecified" else short


def _or_none(value: Any) -> Any:
    return value or None


# ---------------------------------------------------------------- requests


def model_id(raw: str) -> str:
    """The `{id}` path segment(s); ids contain "/" but are never empty."""
    if not raw.strip("/"):
        raise invalid_request("The model id in the path is empty.", "id")
    return raw


def page_size(value: int | None) -> int:
    """0 lets the service choose (50)."""
    if value is None:
        return 0
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise invalid_request(f"`page_size` must be 1 to {MAX_PAGE_SIZE}.", "page_size")
    return value


def list_models_request(size: int | None, token: str | None) -> mpb.ListModelsRequest:
    return mpb.ListModelsRequest(page_size=page_size(size), page_token=token or "")


def download_request(body: DownloadBody) -> mpb.DownloadModelRequest:
    return mpb.DownloadModelRequest(
        repo_id=body.repo_id,
        revision=body.revision or "",
        token=body.token or "",
        format=_FORMATS[body.format] if body.format else mpb.WEIGHT_FORMAT_UNSPECIFIED,
    )


def load_spec(body: LoadSpecBody) -> mpb.LoadSpec:
    return mpb.LoadSpec(
        dtype=body.dtype or "",
        quantization=(
            _QUANTIZATIONS[body.quantization] if body.quantization else mpb.QUANTIZATION_UNSPECIFIED
        ),
        device=body.device or "",
        context_tokens=body.context_tokens or 0,
    )


def estimate_request(id_: str, body: EstimateBody) -> mpb.EstimateModelMemoryRequest:
    return mpb.EstimateModelMemoryRequest(
        id=model_id(id_), spec=load_spec(body), sae_bytes=body.sae_bytes or 0
    )


def load_request(id_: str, body: LoadBody) -> mpb.LoadModelRequest:
    return mpb.LoadModelRequest(
        id=model_id(id_), spec=load_spec(body), allow_overcommit=body.allow_overcommit
    )


def list_operations_request(
    size: int | None, token: str | None, unfinished_only: bool
) -> ospb.ListOperationsRequest:
    return ospb.ListOperationsRequest(
        page_size=page_size(size), page_token=token or "", unfinished_only=unfinished_only
    )


# ---------------------------------------------------------------- responses


def cached_model(model: mpb.CachedModel) -> dict[str, Any]:
    return {
        "id": model.id,
        "repo_id": _or_none(model.repo_id),
        "revision": _or_none(model.revision),
        "commit_sha": _or_none(model.commit_sha),
        "format": enum_name(mpb.WeightFormat, model.format, "WEIGHT_FORMAT_"),
        "parameter_count": _or_none(model.parameter_count),
        "size_bytes": model.size_bytes,
        "state": enum_name(mpb.CachedModelState, model.state, "CACHED_MODEL_STATE_"),
        "loaded": model.loaded,
    }


def is_final(op: opb.Operation) -> bool:
    return op.state in FINAL_STATES


def operation(op: opb.Operation) -> dict[str, Any]:
    return {
        "id": op.id,
        "kind": enum_name(opb.OperationKind, op.kind, "OPERATION_KIND_"),
        "state": enum_name(opb.OperationState, op.state, "OPERATION_STATE_"),
        "done": is_final(op),
        "stage": _or_none(op.stage),
        "target": _or_none(op.target),
        "bytes_done": op.bytes_done,
        "bytes_total": _or_none(op.bytes_total),
        "bytes_per_s": op.bytes_per_s,
        "eta_s": op.eta_s if op.HasField("eta_s") else None,
        "error_message": _or_none(op.error_message),
        # Lower case, like the `code` of an OpenAI error object.
        "error_reason": op.error_reason.lower() or None,
        "created_at_unix_ms": op.created_at_unix_ms,
        "updated_at_unix_ms": op.updated_at_unix_ms,
        "finished_at_unix_ms": _or_none(op.finished_at_unix_ms),
    }


def page(items: list[dict[str, Any]], next_page_token: str) -> dict[str, Any]:
    return {"data": items, "next_page_token": _or_none(next_page_token)}


def estimate(response: mpb.EstimateModelMemoryResponse) -> dict[str, Any]:
    return {
        "weights_bytes": response.weights_bytes,
        "kv_cache_bytes": response.kv_cache_bytes,
        "overhead_bytes": response.overhead_bytes,
        "sae_bytes": response.sae_bytes,
        "total_bytes": response.total_bytes,
        "available_bytes": response.available_bytes,
        "fits": response.fits,
        "device": response.device,
    }


def load_result(response: mpb.LoadModelResponse) -> dict[str, Any]:
    return {
        "model": cached_model(response.model),
        "load_s": response.load_s,
        "warning": _or_none(response.warning),
    }


def unload_result(response: mpb.UnloadModelResponse) -> dict[str, Any]:
    return {
        "rss_before_bytes": response.rss_before_bytes,
        "rss_after_bytes": response.rss_after_bytes,
    }


def delete_result(id_: str, response: mpb.DeleteModelResponse) -> dict[str, Any]:
    return {"id": id_, "deleted": True, "freed_bytes": response.freed_bytes}


# ---------------------------------------------------------------- WebSocket frames


def _compact(payload: dict[str, Any]) -> str:
    # The same bytes Starlette's JSONResponse would write.
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def operation_frame(op: opb.Operation) -> str:
    return _compact({"type": "operation", "operation": operation(op)})


def error_frame(error: InferenceError) -> tuple[str, int]:
    """The error frame (the OpenAI error object) and the close code that follows it.

    A client error (HTTP 4xx in the error table: not found, bad id, no API key)
    closes with 1008; a server error with 1011.
    """
    row, body = describe(error)
    close_code = CLOSE_POLICY_VIOLATION if row.status < 500 else CLOSE_INTERNAL_ERROR
    return _compact({"type": "error", **body}), close_code
