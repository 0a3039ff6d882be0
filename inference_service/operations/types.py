"""Domain snapshot of an operation; servicers translate it to `millm.v1.Operation`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OperationKind(StrEnum):
    MODEL_DOWNLOAD = "model_download"
    SAE_DOWNLOAD = "sae_download"
    SAE_UPLOAD = "sae_upload"
    TRAINING = "training"
    FEATURE_STATISTICS = "feature_statistics"


class OperationState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED_STATES = (OperationState.PENDING, OperationState.RUNNING)
FINISHED_STATES = (OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED)


@dataclass(frozen=True)
class OperationSnapshot:
    id: str
    kind: str  # an OperationKind value; kept open so new kinds need no migration
    state: OperationState
    stage: str
    target: str
    bytes_done: int = 0
    bytes_total: int = 0  # 0 while unknown
    bytes_per_s: float = 0.0
    eta_s: float | None = None
    error_message: str = ""
    error_reason: str = ""
    created_at_unix_ms: int = 0
    updated_at_unix_ms: int = 0
    finished_at_unix_ms: int = 0  # 0 until finished

    @property
    def done(self) -> bool:
        return self.state in FINISHED_STATES
