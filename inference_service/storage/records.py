"""Domain records the repositories return: frozen, detached from any session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class ModelFormat(StrEnum):
    SAFETENSORS = "safetensors"
    PYTORCH = "pytorch"
    GGUF = "gguf"


class ModelState(StrEnum):
    DOWNLOADING = "downloading"
    READY = "ready"
    CORRUPTED = "corrupted"
    MISSING = "missing"


class OperationKind(StrEnum):
    MODEL_DOWNLOAD = "model_download"
    SAE_DOWNLOAD = "sae_download"
    SAE_UPLOAD = "sae_upload"
    TRAINING = "training"


class OperationState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED_STATES = (OperationState.PENDING, OperationState.RUNNING)
FINISHED_STATES = (OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED)


def model_record_id(repo_id: str, revision: str) -> str:
    """The key of a downloaded model: `owner/name@revision`."""
    return f"{repo_id}@{revision}"


@dataclass(frozen=True, slots=True)
class ModelFile:
    path: str  # relative to the record's local_dir, '/'-separated
    size_bytes: int
    sha256: str | None = None
    verified: bool = False


@dataclass(frozen=True, slots=True)
class ModelRecord:
    id: str
    repo_id: str
    revision: str
    commit_sha: str | None
    format: ModelFormat
    parameter_count: int | None
    size_bytes: int
    state: ModelState
    local_dir: str  # relative to the data directory
    created_at: datetime
    updated_at: datetime
    files: tuple[ModelFile, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    id: str
    kind: str  # an OperationKind value; kept open so new kinds need no migration
    state: OperationState
    stage: str
    bytes_done: int
    bytes_total: int | None  # None while unknown
    error_message: str | None
    target: str
    params_json: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


@dataclass(frozen=True, slots=True)
class OperationPage:
    items: tuple[Operation, ...]
    next_offset: int | None  # None on the last page


class SaeState(StrEnum):
    DOWNLOADING = "downloading"
    READY = "ready"
    CORRUPTED = "corrupted"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class SaeRecord:
    """A cached SAE. What it is (d_in, hook, ...) lives in `spec`, a JSON object the
    SAE domain reads; where it came from lives in `source`. Both are plain dicts so
    new fields need no migration."""

    id: str
    name: str
    source_key: str  # unique per origin, so a second download of it finds this record
    source: dict[str, Any]
    format: str
    state: SaeState
    size_bytes: int
    weights_sha256: str | None
    local_dir: str  # relative to the data directory
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    """A saved steering profile. `features` are plain dicts (index, mode, strength,
    normalize, label) that the profiles domain reads; storage does not interpret them."""

    name: str
    description: str
    model_name: str
    sae_id: str  # the cache id when saved; empty when imported without that SAE
    sae_name: str
    weights_sha256: str
    hook_name: str
    d_sae: int
    features: tuple[dict[str, Any], ...]
    active: bool  # the profile to re-activate after a restart
    created_at: datetime
    updated_at: datetime


class TrainingState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


# A run in one of these states has a trainer (or is waiting for one); after a service
# stop no trainer is left, so `TrainingRuns.mark_interrupted` moves them to INTERRUPTED.
UNFINISHED_TRAINING_STATES = (TrainingState.QUEUED, TrainingState.RUNNING, TrainingState.STOPPING)

# The keys of a training metrics dict, in the order of the TrainingMetrics message;
# `eval` tells an evaluation on held-out tokens from a training step's numbers.
TRAINING_METRIC_FIELDS = (
    "step",
    "tokens",
    "loss",
    "mse",
    "l0",
    "l1",
    "fvu",
    "dead_features",
    "tokens_per_s",
    "learning_rate",
    "time_unix_ms",
    "eval",
)


@dataclass(frozen=True, slots=True)
class TrainingRunRecord:
    """One SAE training run. `config` is the training configuration as a JSON object and
    `latest` / `final_eval` are metrics dicts (TRAINING_METRIC_FIELDS); the training
    domain reads them, storage does not."""

    id: str
    name: str
    model: str  # the served model id it trains on
    config: dict[str, Any]
    state: TrainingState
    stage: str
    step: int
    total_steps: int
    latest: dict[str, Any] | None  # the newest training metrics; None before the first
    final_eval: dict[str, Any] | None  # None until the run has been evaluated
    error: str  # empty unless the run failed
    sae_id: str  # the SAE record the run produced; empty until it completes
    checkpoint_step: int  # the step of the newest checkpoint a resume starts from
    created_at: datetime
    updated_at: datetime

    @property
    def finished(self) -> bool:
        return self.state not in UNFINISHED_TRAINING_STATES


@dataclass(frozen=True, slots=True)
class TrainingTemplateRecord:
    """A saved training configuration to start runs from; names are unique."""

    id: str
    name: str
    description: str
    config: dict[str, Any]
    favourite: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CorpusRecord:
    """An uploaded text corpus to train on."""

    id: str
    name: str
    size_bytes: int
    documents: int
    local_path: str  # relative to the data directory
    created_at: datetime
