"""Training runs, templates and corpora as plain values: what the database keeps and
the training service lists."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


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
class TrainingRun:
    """One SAE training run. `config` is the training configuration as a JSON object
    (`TrainingConfig.from_json` reads it) and `latest` / `final_eval` are metrics dicts
    (TRAINING_METRIC_FIELDS)."""

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
class TrainingTemplate:
    """A saved training configuration to start runs from; names are unique."""

    id: str
    name: str
    description: str
    config: dict[str, Any]
    favourite: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Corpus:
    """An uploaded text corpus to train on."""

    id: str
    name: str
    size_bytes: int
    documents: int
    local_path: str  # relative to the data directory
    created_at: datetime
