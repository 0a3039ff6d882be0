"""Pure translation for /api/v1: request bodies -> millm.v1 messages, results -> JSON.

No I/O here. JSON conventions (see docs/management-api.md): snake_case keys,
enums as lower-case short names (`WEIGHT_FORMAT_SAFETENSORS` -> "safetensors"),
sizes in bytes, times in Unix milliseconds, and null where the protobuf value
means "unknown" or "none" (an empty string, a 0 that the contract calls unknown,
an unset optional, an UNSPECIFIED enum).
"""

from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from millm.v1 import model_service_pb2 as mpb
from millm.v1 import operation_pb2 as opb
from millm.v1 import operations_service_pb2 as ospb
from millm.v1 import sae_pb2 as spb
from millm.v1 import sae_service_pb2 as sspb
from openai_bridge.errors import InferenceError, describe, invalid_request
from openai_bridge.management.schemas import (
    DownloadBody,
    EstimateBody,
    LoadBody,
    LoadSpecBody,
    QuantizationName,
    SaeDownloadBody,
    SaeHookBody,
    SaeImportBody,
    SaeLayoutName,
    SaePreviewBody,
    SaeUploadBody,
    WeightFormatName,
)

MAX_PAGE_SIZE = 200

# An operation in one of these states changes no more; its watch ends after it.
FINAL_STATES = frozenset(
    {
        opb.OPERATION_STATE_SUCCEEDED,
        opb.OPERATION_STATE_FAILED,
        opb.OPERATION_STATE_CANCELLED,
    }
)

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
_SAE_LAYOUTS: dict[SaeLayoutName, int] = {
    "saelens": spb.SAE_LAYOUT_SAELENS,
    "mistudio": spb.SAE_LAYOUT_MISTUDIO,
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


def sae_layout(name: SaeLayoutName | None) -> int:
    """None lets the service choose (SAELens)."""
    return _SAE_LAYOUTS[name] if name else spb.SAE_LAYOUT_UNSPECIFIED


def list_saes_request(size: int | None, token: str | None) -> sspb.ListSaesRequest:
    return sspb.ListSaesRequest(page_size=page_size(size), page_token=token or "")


def list_sae_releases_request(
    model: str | None, size: int | None, token: str | None
) -> sspb.ListSaeReleasesRequest:
    return sspb.ListSaeReleasesRequest(
        model_filter=model or "", page_size=page_size(size), page_token=token or ""
    )


def preview_sae_request(body: SaePreviewBody) -> sspb.PreviewSaeRepoRequest:
    return sspb.PreviewSaeRepoRequest(
        repo_id=body.repo_id, revision=body.revision or "", token=body.token or ""
    )


SAE_SOURCE_REQUIRED = (
    "Name the SAE to download in one way: either `repo_id` (with optional `path` and "
    "`revision`) or `release` and `sae_id`."
)


def download_sae_request(body: SaeDownloadBody) -> sspb.DownloadSaeRequest:
    """The body names a Hub folder or a registry entry, never both (the `source` oneof)."""
    names_hub = body.repo_id is not None or body.path is not None or body.revision is not None
    names_release = body.release is not None or body.sae_id is not None
    if names_hub == names_release:
        raise invalid_request(SAE_SOURCE_REQUIRED)
    token = body.token or ""
    if names_release:
        if body.release is None:
            raise invalid_request("`sae_id` needs the `release` it belongs to.", "release")
        if body.sae_id is None:
            raise invalid_request("`release` needs the `sae_id` of one SAE in it.", "sae_id")
        release = spb.ReleaseSaeSource(release=body.release, sae_id=body.sae_id)
        return sspb.DownloadSaeRequest(release=release, token=token)
    if body.repo_id is None:
        raise invalid_request("`path` and `revision` need the `repo_id` they are in.", "repo_id")
    hub = spb.HubSaeSource(repo_id=body.repo_id, path=body.path or "", revision=body.revision or "")
    return sspb.DownloadSaeRequest(hub=hub, token=token)


def import_sae_request(body: SaeImportBody) -> sspb.ImportSaeRequest:
    return sspb.ImportSaeRequest(path=body.path, name=body.name or "")


def compatibility_request(id_: str, body: SaeHookBody) -> sspb.CheckSaeCompatibilityRequest:
    return sspb.CheckSaeCompatibilityRequest(id=id_, hook_name=body.hook_name or "")


def attach_request(id_: str, body: SaeHookBody) -> sspb.AttachSaeRequest:
    return sspb.AttachSaeRequest(id=id_, hook_name=body.hook_name or "")


def detach_request(body: SaeHookBody) -> sspb.DetachSaeRequest:
    return sspb.DetachSaeRequest(hook_name=body.hook_name or "")


def export_request(id_: str, layout: SaeLayoutName | None) -> sspb.ExportSaeRequest:
    return sspb.ExportSaeRequest(id=id_, layout=sae_layout(layout))


def upload_sae_request(id_: str, body: SaeUploadBody) -> sspb.UploadSaeRequest:
    return sspb.UploadSaeRequest(
        id=id_,
        repo_id=body.repo_id,
        path_in_repo=body.path_in_repo or "",
        layout=sae_layout(body.layout),
        token=body.token or "",
        private=body.private,
        commit_message=body.commit_message or "",
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


# ---------------------------------------------------------------- SAE responses


def _optional(message: Any, field: str) -> Any:
    """An `optional` proto field: its value, or None when unset (0 is a real layer)."""
    return getattr(message, field) if message.HasField(field) else None


def sae_source(source: spb.SaeSource) -> dict[str, Any] | None:
    kind = source.WhichOneof("kind")
    if kind == "hub":
        return {
            "type": "hub",
            "repo_id": source.hub.repo_id,
            "path": _or_none(source.hub.path),
            "revision": _or_none(source.hub.revision),
            "commit_sha": _or_none(source.hub.commit_sha),
        }
    if kind == "release":
        return {
            "type": "release",
            "release": source.release.release,
            "sae_id": source.release.sae_id,
        }
    if kind == "local":
        return {"type": "local", "folder_name": source.local.folder_name}
    return None


def sae(message: spb.Sae) -> dict[str, Any]:
    return {
        "id": message.id,
        "name": message.name,
        "source": sae_source(message.source),
        "format": enum_name(spb.SaeFormat, message.format, "SAE_FORMAT_"),
        "architecture": _or_none(message.architecture),
        "d_in": message.d_in,
        "d_sae": message.d_sae,
        "hook_name": _or_none(message.hook_name),
        "layer": _optional(message, "layer"),
        "k": _optional(message, "k"),
        "model_name": _or_none(message.model_name),
        "dtype": _or_none(message.dtype),
        "size_bytes": message.size_bytes,
        "state": enum_name(spb.SaeState, message.state, "SAE_STATE_"),
        "weights_sha256": _or_none(message.weights_sha256),
        "attached_hook_name": _or_none(message.attached_hook_name),
        "neuronpedia_id": _or_none(message.neuronpedia_id),
        "has_feature_statistics": message.has_feature_statistics,
        "created_at_unix_ms": message.created_at_unix_ms,
    }


def sae_candidate(candidate: spb.SaeCandidate) -> dict[str, Any]:
    return {
        "path": _or_none(candidate.path),
        "format": enum_name(spb.SaeFormat, candidate.format, "SAE_FORMAT_"),
        "architecture": _or_none(candidate.architecture),
        # 0: unknown until the weights are downloaded.
        "d_in": _or_none(candidate.d_in),
        "d_sae": _or_none(candidate.d_sae),
        "hook_name": _or_none(candidate.hook_name),
        "layer": _optional(candidate, "layer"),
        "k": _optional(candidate, "k"),
        "model_name": _or_none(candidate.model_name),
        "size_bytes": candidate.size_bytes,
        "problem": _or_none(candidate.problem),
    }


def sae_preview(response: sspb.PreviewSaeRepoResponse) -> dict[str, Any]:
    return {
        "commit_sha": _or_none(response.commit_sha),
        "candidates": [sae_candidate(c) for c in response.candidates],
    }


def sae_release(release: spb.SaeRelease) -> dict[str, Any]:
    return {
        "name": release.name,
        "repo_id": release.repo_id,
        "model": release.model,
        "sae_ids": list(release.sae_ids),
        "supported": release.supported,
        "unsupported_reason": _or_none(release.unsupported_reason),
    }


def compatibility_issue(issue: spb.CompatibilityIssue) -> dict[str, Any]:
    # Lower case, like the `code` of an OpenAI error object.
    return {"reason": issue.reason.lower(), "message": issue.message}


def sae_compatibility(result: spb.SaeCompatibility) -> dict[str, Any]:
    return {
        "compatible": result.compatible,
        "errors": [compatibility_issue(i) for i in result.errors],
        "warnings": [compatibility_issue(i) for i in result.warnings],
        "hook_name": _or_none(result.hook_name),
        "module_name": _or_none(result.module_name),
        "model_name": _or_none(result.model_name),
        "model_d_model": result.model_d_model,
        "model_num_layers": result.model_num_layers,
        "sae_bytes": result.sae_bytes,
        "available_bytes": result.available_bytes,
    }


def sae_attachment(attachment: spb.SaeAttachment) -> dict[str, Any]:
    return {
        "sae_id": attachment.sae_id,
        "hook_name": attachment.hook_name,
        "module_name": attachment.module_name,
        "layer": attachment.layer,
        "sae_bytes": attachment.sae_bytes,
        "device": attachment.device,
        "attached_at_unix_ms": attachment.attached_at_unix_ms,
    }


def attach_result(response: sspb.AttachSaeResponse) -> dict[str, Any]:
    return {
        "attachment": sae_attachment(response.attachment),
        "warnings": [compatibility_issue(i) for i in response.warnings],
    }


def detach_result(response: sspb.DetachSaeResponse) -> dict[str, Any]:
    return {
        "attachment": (
            sae_attachment(response.attachment) if response.HasField("attachment") else None
        ),
        "freed_bytes": response.freed_bytes,
        "rss_before_bytes": response.rss_before_bytes,
        "rss_after_bytes": response.rss_after_bytes,
    }


def sae_cache_usage(response: sspb.GetSaeCacheUsageResponse) -> dict[str, Any]:
    return {
        "used_bytes": response.used_bytes,
        "sae_count": response.sae_count,
        "free_bytes": response.free_bytes,
    }


def sae_delete_result(id_: str, response: sspb.DeleteSaeResponse) -> dict[str, Any]:
    return {"id": id_, "deleted": True, "freed_bytes": response.freed_bytes}


_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


def export_content_disposition(filename: str, id_: str) -> str:
    """`attachment; filename="..."` with the service's suggested name, made header-safe."""
    safe = _UNSAFE_FILENAME.sub("_", filename or f"{id_}.zip").strip("._") or "sae.zip"
    return f'attachment; filename="{safe}"'


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
