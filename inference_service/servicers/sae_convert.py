"""Translation between SAE domain objects and millm.v1 SAE messages."""

from __future__ import annotations

from inference_service.sae.attachments import Attachment
from inference_service.sae.catalog import CachedSae, Layout
from inference_service.sae.compatibility import Compatibility, Issue
from inference_service.sae.manager import Restore, RestoreState
from inference_service.sae.preview import Candidate
from inference_service.sae.registry import Release
from millm.v1 import sae_pb2 as pb

_FORMATS = {
    "saelens": pb.SAE_FORMAT_SAELENS,
    "saelens_legacy": pb.SAE_FORMAT_SAELENS_LEGACY,
    "gemma_scope": pb.SAE_FORMAT_GEMMA_SCOPE,
    "sparsify": pb.SAE_FORMAT_SPARSIFY,
    "mistudio": pb.SAE_FORMAT_MISTUDIO,
}
_STATES = {
    "downloading": pb.SAE_STATE_DOWNLOADING,
    "ready": pb.SAE_STATE_READY,
    "corrupted": pb.SAE_STATE_CORRUPTED,
    "missing": pb.SAE_STATE_MISSING,
}
_LAYOUTS: dict[int, Layout] = {
    pb.SAE_LAYOUT_UNSPECIFIED: "saelens",
    pb.SAE_LAYOUT_SAELENS: "saelens",
}
_LAYOUTS[pb.SAE_LAYOUT_MISTUDIO] = "mistudio"


def layout(value: int) -> Layout:
    return _LAYOUTS.get(value, "saelens")


def sae(cached: CachedSae, *, attached_hook_name: str) -> pb.Sae:
    record, spec = cached.record, cached.spec
    source = record.source
    message = pb.Sae(
        id=record.id,
        name=record.name,
        source=_source(source),
        format=_FORMATS.get(record.format, pb.SAE_FORMAT_UNSPECIFIED),
        size_bytes=record.size_bytes,
        state=_STATES[record.state.value],
        weights_sha256=record.weights_sha256 or "",
        attached_hook_name=attached_hook_name,
        created_at_unix_ms=int(record.created_at.timestamp() * 1000),
        has_feature_statistics=cached.has_feature_statistics,
    )
    if spec is not None:
        message.architecture = spec.architecture
        message.d_in = spec.d_in or 0
        message.d_sae = spec.d_sae or 0
        message.hook_name = spec.hook_name or ""
        message.model_name = spec.model_name or ""
        message.dtype = spec.dtype
        message.neuronpedia_id = str(spec.metadata.get("neuronpedia_id") or "")
        if spec.layer is not None:
            message.layer = spec.layer
        if spec.k is not None:
            message.k = spec.k
    return message


def _source(source: dict) -> pb.SaeSource:
    kind = source.get("kind")
    if kind == "local":
        return pb.SaeSource(local=pb.LocalSaeSource(folder_name=source.get("folder_name", "")))
    if kind == "release":
        return pb.SaeSource(
            release=pb.ReleaseSaeSource(release=source["release"], sae_id=source["sae_id"])
        )
    return pb.SaeSource(
        hub=pb.HubSaeSource(
            repo_id=source.get("repo_id", ""),
            path=source.get("path", ""),
            revision=source.get("revision", ""),
            commit_sha=source.get("commit_sha", ""),
        )
    )


def candidate(found: Candidate) -> pb.SaeCandidate:
    message = pb.SaeCandidate(
        path=found.path,
        format=_FORMATS.get(found.format, pb.SAE_FORMAT_UNSPECIFIED),
        size_bytes=found.size_bytes,
        problem=found.problem,
    )
    spec = found.spec
    if spec is not None:
        message.architecture = spec.architecture or ""
        message.d_in = spec.d_in or 0
        message.d_sae = spec.d_sae or 0
        message.hook_name = spec.hook_name or ""
        message.model_name = spec.model_name or ""
        if spec.layer is not None:
            message.layer = spec.layer
        if spec.k is not None:
            message.k = spec.k
    return message


def release(found: Release) -> pb.SaeRelease:
    return pb.SaeRelease(
        name=found.name,
        repo_id=found.repo_id,
        model=found.model,
        sae_ids=sorted(found.sae_paths),
        supported=found.supported,
        unsupported_reason=found.unsupported_reason,
    )


def issue(found: Issue) -> pb.CompatibilityIssue:
    return pb.CompatibilityIssue(reason=found.reason, message=found.message)


def compatibility(result: Compatibility) -> pb.SaeCompatibility:
    return pb.SaeCompatibility(
        compatible=result.compatible,
        errors=[issue(e) for e in result.errors],
        warnings=[issue(w) for w in result.warnings],
        hook_name=result.site.hook_name if result.site is not None else "",
        module_name=result.module_name,
        model_d_model=result.model.d_model,
        model_num_layers=result.model.num_layers,
        sae_bytes=result.sae_bytes,
        available_bytes=result.available_bytes,
        model_name=result.model.name,
    )


def attachment(found: Attachment) -> pb.SaeAttachment:
    return pb.SaeAttachment(
        sae_id=found.sae_id,
        hook_name=found.site.hook_name,
        module_name=found.module_name,
        layer=found.site.layer,
        sae_bytes=found.sae_bytes,
        device=found.device,
        attached_at_unix_ms=found.attached_at_unix_ms,
        dtype=found.dtype,
    )


_RESTORE_STATES = {
    RestoreState.UNSPECIFIED: pb.SAE_RESTORE_STATE_UNSPECIFIED,
    RestoreState.NOTHING: pb.SAE_RESTORE_STATE_NOTHING,
    RestoreState.PENDING: pb.SAE_RESTORE_STATE_PENDING,
    RestoreState.RESTORED: pb.SAE_RESTORE_STATE_RESTORED,
    RestoreState.FAILED: pb.SAE_RESTORE_STATE_FAILED,
}


def restore(found: Restore) -> pb.SaeRestore:
    return pb.SaeRestore(
        state=_RESTORE_STATES[found.state],
        sae_id=found.sae_id,
        hook_name=found.hook_name,
        message=found.message,
        reason=found.reason,
    )
