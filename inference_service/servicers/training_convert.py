"""Protobuf <-> domain for training: configs, runs, metrics, templates, corpora."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from inference_service.training.config import TrainingConfig
from inference_service.training.types import Corpus, TrainingRun, TrainingState, TrainingTemplate
from millm.v1 import training_pb2 as pb

_ARCHITECTURES = {
    pb.TRAINING_ARCHITECTURE_STANDARD: "standard",
    pb.TRAINING_ARCHITECTURE_JUMPRELU: "jumprelu",
    pb.TRAINING_ARCHITECTURE_TOPK: "topk",
    pb.TRAINING_ARCHITECTURE_BATCHTOPK: "batchtopk",
}
_ARCHITECTURE_ENUMS = {name: value for value, name in _ARCHITECTURES.items()}
STATES = {
    TrainingState.QUEUED: pb.TRAINING_STATE_QUEUED,
    TrainingState.RUNNING: pb.TRAINING_STATE_RUNNING,
    TrainingState.STOPPING: pb.TRAINING_STATE_STOPPING,
    TrainingState.STOPPED: pb.TRAINING_STATE_STOPPED,
    TrainingState.COMPLETED: pb.TRAINING_STATE_COMPLETED,
    TrainingState.FAILED: pb.TRAINING_STATE_FAILED,
    TrainingState.INTERRUPTED: pb.TRAINING_STATE_INTERRUPTED,
}
# Config fields that are not plain scalars of the same name in the message.
_SPECIAL = ("corpus_id", "corpus_path", "architecture")


def config_fields(message: pb.TrainingConfig) -> dict[str, Any]:
    """The message's fields by TrainingConfig name; zero values stay zero (= default)."""
    fields: dict[str, Any] = {
        f.name: getattr(message, f.name)
        for f in dataclasses.fields(TrainingConfig)
        if f.name not in _SPECIAL
    }
    fields["architecture"] = _ARCHITECTURES.get(message.architecture, "")
    which = message.corpus.WhichOneof("source")
    fields["corpus_id"] = message.corpus.corpus_id if which == "corpus_id" else ""
    fields["corpus_path"] = message.corpus.path if which == "path" else ""
    return fields


def given_fields(message: pb.TrainingConfig) -> dict[str, Any]:
    """Only the non-zero fields: what a request overrides on top of a template."""
    return {name: value for name, value in config_fields(message).items() if value}


def config_message(config: TrainingConfig | dict[str, Any]) -> pb.TrainingConfig:
    values = config.to_json() if isinstance(config, TrainingConfig) else dict(config)
    message = pb.TrainingConfig(
        **{k: v for k, v in values.items() if k not in _SPECIAL},
        architecture=_ARCHITECTURE_ENUMS.get(values.get("architecture", ""), 0),
    )
    if values.get("corpus_id"):
        message.corpus.corpus_id = values["corpus_id"]
    elif values.get("corpus_path"):
        message.corpus.path = values["corpus_path"]
    return message


def metrics_message(metrics: dict[str, Any] | None) -> pb.TrainingMetrics | None:
    if not metrics:
        return None
    return pb.TrainingMetrics(**metrics)


def run_message(record: TrainingRun) -> pb.TrainingRun:
    return pb.TrainingRun(
        id=record.id,
        name=record.name,
        config=config_message(record.config),
        state=STATES[record.state],
        stage=record.stage,
        step=record.step,
        total_steps=record.total_steps,
        latest=metrics_message(record.latest),
        final_eval=metrics_message(record.final_eval),
        error=record.error,
        sae_id=record.sae_id,
        model=record.model,
        checkpoint_step=record.checkpoint_step,
        created_at_unix_ms=_ms(record.created_at),
        updated_at_unix_ms=_ms(record.updated_at),
    )


def template_message(record: TrainingTemplate) -> pb.TrainingTemplate:
    return pb.TrainingTemplate(
        id=record.id,
        name=record.name,
        description=record.description,
        config=config_message(record.config),
        favourite=record.favourite,
        created_at_unix_ms=_ms(record.created_at),
        updated_at_unix_ms=_ms(record.updated_at),
    )


def corpus_message(record: Corpus) -> pb.Corpus:
    return pb.Corpus(
        id=record.id,
        name=record.name,
        size_bytes=record.size_bytes,
        documents=record.documents,
        created_at_unix_ms=_ms(record.created_at),
    )


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)
