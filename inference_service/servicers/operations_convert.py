"""Pure translation of the operations domain's snapshots to `millm.v1.Operation`."""

from __future__ import annotations

from inference_service.operations.types import OperationSnapshot
from millm.v1 import operation_pb2

_OPERATION_STATES = {
    "pending": operation_pb2.OPERATION_STATE_PENDING,
    "running": operation_pb2.OPERATION_STATE_RUNNING,
    "succeeded": operation_pb2.OPERATION_STATE_SUCCEEDED,
    "failed": operation_pb2.OPERATION_STATE_FAILED,
    "cancelled": operation_pb2.OPERATION_STATE_CANCELLED,
}
_OPERATION_KINDS = {
    "model_download": operation_pb2.OPERATION_KIND_MODEL_DOWNLOAD,
    "sae_download": operation_pb2.OPERATION_KIND_SAE_DOWNLOAD,
    "sae_upload": operation_pb2.OPERATION_KIND_SAE_UPLOAD,
    "feature_statistics": operation_pb2.OPERATION_KIND_FEATURE_STATISTICS,
}


def operation(snapshot: OperationSnapshot) -> operation_pb2.Operation:
    message = operation_pb2.Operation(
        id=snapshot.id,
        kind=_OPERATION_KINDS.get(snapshot.kind, operation_pb2.OPERATION_KIND_UNSPECIFIED),
        state=_OPERATION_STATES[snapshot.state],
        stage=snapshot.stage,
        target=snapshot.target,
        bytes_done=snapshot.bytes_done,
        bytes_total=snapshot.bytes_total,
        bytes_per_s=snapshot.bytes_per_s,
        error_message=snapshot.error_message,
        error_reason=snapshot.error_reason,
        created_at_unix_ms=snapshot.created_at_unix_ms,
        updated_at_unix_ms=snapshot.updated_at_unix_ms,
        finished_at_unix_ms=snapshot.finished_at_unix_ms,
    )
    if snapshot.eta_s is not None:
        message.eta_s = snapshot.eta_s
    return message
