"""Training runs, their metrics, templates and corpora in the database."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from inference_service.storage.database import (
    RecordExistsError,
    rowcount,
    upsert_insert,
    utc_now,
)
from inference_service.storage.repository import TableRepository
from inference_service.storage.tables import (
    CorpusRow,
    TrainingMetricRow,
    TrainingRunRow,
    TrainingTemplateRow,
)
from inference_service.training.types import (
    TRAINING_METRIC_FIELDS,
    UNFINISHED_TRAINING_STATES,
    Corpus,
    TrainingRun,
    TrainingState,
    TrainingTemplate,
)

TRAINING_INTERRUPTED_STAGE = "interrupted by a service stop"


class TrainingRuns(TableRepository[TrainingRunRow, TrainingRun]):
    """SAE training runs, newest first; their metrics live in `TrainingMetrics`."""

    row_type = TrainingRunRow
    noun = "training run"

    # What `update` may change: the columns a trainer reports on, plus the two a user edits.
    _UPDATABLE = frozenset(
        {
            "name",
            "config",
            "state",
            "stage",
            "step",
            "total_steps",
            "latest",
            "final_eval",
            "error",
            "sae_id",
            "checkpoint_step",
        }
    )

    def create(
        self,
        record_id: str,
        name: str,
        model: str,
        config: dict[str, Any],
        total_steps: int,
    ) -> TrainingRun:
        """A queued run at step 0."""
        now = utc_now()
        self._session.add(
            TrainingRunRow(
                id=record_id,
                name=name,
                model=model,
                config_json=_json(config),
                state=TrainingState.QUEUED.value,
                stage="",
                step=0,
                total_steps=total_steps,
                latest_json=None,
                final_eval_json=None,
                error="",
                sae_id="",
                checkpoint_step=0,
                created_at=now,
                updated_at=now,
            )
        )
        return self._stored(record_id)

    def list(self, limit: int = 50, offset: int = 0) -> tuple[TrainingRun, ...]:
        """Newest first."""
        if limit < 1 or offset < 0:
            raise ValueError("limit must be >= 1 and offset >= 0")
        query = (
            select(TrainingRunRow)
            .order_by(TrainingRunRow.created_at.desc(), TrainingRunRow.id)
            .limit(limit)
            .offset(offset)
        )
        return self._all(query)

    def count(self) -> int:
        return self._session.scalar(select(func.count()).select_from(TrainingRunRow)) or 0

    def update(self, record_id: str, **fields: Any) -> TrainingRun:
        """Change the fields given (names as in TrainingRun) and bump updated_at."""
        unknown = set(fields) - self._UPDATABLE
        if unknown:
            raise TypeError(f"training runs have no updatable field(s) {sorted(unknown)}")
        values: dict[str, object] = {"updated_at": utc_now()}
        for field, value in fields.items():
            if field == "state":
                values["state"] = TrainingState(value).value
            elif field == "config":
                values["config_json"] = _json(value)
            elif field in ("latest", "final_eval"):
                values[f"{field}_json"] = None if value is None else _json(value)
            else:
                values[field] = value
        self._update(record_id, values)
        return self._stored(record_id)

    def delete(self, record_id: str) -> bool:
        """Delete the run and its metrics; False if it was not there."""
        # Explicitly as well as by ON DELETE CASCADE, so it holds on a connection that
        # has SQLite's foreign keys off (an external tool's, say).
        self._session.execute(
            delete(TrainingMetricRow).where(TrainingMetricRow.run_id == record_id)
        )
        return self._delete(record_id)

    def mark_interrupted(self) -> int:
        """Interrupt the runs a service stop left without a trainer; returns how many."""
        return rowcount(
            self._session,
            update(TrainingRunRow)
            .where(TrainingRunRow.state.in_([s.value for s in UNFINISHED_TRAINING_STATES]))
            .values(
                state=TrainingState.INTERRUPTED.value,
                stage=TRAINING_INTERRUPTED_STAGE,
                updated_at=utc_now(),
            ),
        )

    def _from_row(self, row: TrainingRunRow) -> TrainingRun:
        return TrainingRun(
            id=row.id,
            name=row.name,
            model=row.model,
            config=json.loads(row.config_json),
            state=TrainingState(row.state),
            stage=row.stage,
            step=row.step,
            total_steps=row.total_steps,
            latest=None if row.latest_json is None else json.loads(row.latest_json),
            final_eval=None if row.final_eval_json is None else json.loads(row.final_eval_json),
            error=row.error,
            sae_id=row.sae_id,
            checkpoint_step=row.checkpoint_step,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class TrainingMetrics:
    """The metrics a run logged, one row per (run, step, eval) as plain dicts with the
    keys TRAINING_METRIC_FIELDS (the TrainingMetrics message's fields)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, run_id: str, metrics: Sequence[dict[str, Any]]) -> None:
        """Store `metrics`, replacing any row with the same (step, eval): a resumed run
        logs again the steps after its last checkpoint. Missing keys read as 0 (as in
        the message); unknown keys raise ValueError. The run must exist."""
        # Keyed, so the last of two entries for one step wins within a batch too.
        rows = {
            (row["step"], row["eval"]): row for row in (_metric_row(run_id, m) for m in metrics)
        }
        if not rows:
            return
        insert_ = upsert_insert(self._session, TrainingMetricRow)
        # ON CONFLICT DO UPDATE (both backends have it): one statement replaces a row, with
        # no window between a delete and an insert.
        key = ("run_id", "step", "eval")
        statement = insert_.on_conflict_do_update(
            index_elements=list(key),
            set_={f: insert_.excluded[f] for f in TRAINING_METRIC_FIELDS if f not in key},
        )
        self._session.execute(statement, list(rows.values()))

    def list(self, run_id: str, after_step: int = -1, limit: int = 1000) -> list[dict[str, Any]]:
        """The run's metrics with step > after_step, by step (a step's training numbers
        before its evaluation); page on with the last step seen."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        query = (
            select(TrainingMetricRow)
            .where(TrainingMetricRow.run_id == run_id, TrainingMetricRow.step > after_step)
            .order_by(TrainingMetricRow.step, TrainingMetricRow.eval)
            .limit(limit)
        )
        return [_training_metrics(row) for row in self._session.scalars(query)]

    def delete_for_run(self, run_id: str) -> int:
        statement = delete(TrainingMetricRow).where(TrainingMetricRow.run_id == run_id)
        return rowcount(self._session, statement)


class TrainingTemplates(TableRepository[TrainingTemplateRow, TrainingTemplate]):
    """Saved training configurations; names are unique, favourites list first."""

    row_type = TrainingTemplateRow
    noun = "training template"

    def create(
        self,
        record_id: str,
        name: str,
        description: str,
        config: dict[str, Any],
        favourite: bool = False,
    ) -> TrainingTemplate:
        """Insert a template; one with the same name raises RecordExistsError."""
        now = utc_now()
        values: dict[str, object] = {
            "id": record_id,
            "name": name,
            "description": description,
            "config_json": _json(config),
            "favourite": favourite,
            "created_at": now,
            "updated_at": now,
        }
        insert_ = upsert_insert(self._session, TrainingTemplateRow)
        # ON CONFLICT rather than a read first: two replicas may race on one name.
        statement = insert_.values(values).on_conflict_do_nothing(index_elements=["name"])
        if self._session.scalar(statement.returning(TrainingTemplateRow.id)) is None:
            raise RecordExistsError(f"training template {name!r} exists")
        return self._stored(record_id)

    def get_by_name(self, name: str) -> TrainingTemplate | None:
        return self._first(select(TrainingTemplateRow).where(TrainingTemplateRow.name == name))

    def list(self) -> tuple[TrainingTemplate, ...]:
        """Favourites first, then by name."""
        query = select(TrainingTemplateRow).order_by(
            TrainingTemplateRow.favourite.desc(), TrainingTemplateRow.name
        )
        return self._all(query)

    def update(
        self,
        record_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        config: dict[str, Any] | None = None,
        favourite: bool | None = None,
    ) -> TrainingTemplate:
        """Change the fields given; None keeps a field. Renaming onto another template's
        name raises RecordExistsError."""
        values: dict[str, object] = {"updated_at": utc_now()}
        if name is not None:
            values["name"] = name
        if description is not None:
            values["description"] = description
        if config is not None:
            values["config_json"] = _json(config)
        if favourite is not None:
            values["favourite"] = favourite
        try:
            # A savepoint, so the unique name's violation leaves the transaction usable
            # (PostgreSQL aborts the whole transaction otherwise).
            with self._session.begin_nested():
                self._update(record_id, values)
        except IntegrityError as error:
            raise RecordExistsError(f"training template {name!r} exists") from error
        return self._stored(record_id)

    def delete(self, record_id: str) -> bool:
        return self._delete(record_id)

    def _from_row(self, row: TrainingTemplateRow) -> TrainingTemplate:
        return TrainingTemplate(
            id=row.id,
            name=row.name,
            description=row.description,
            config=json.loads(row.config_json),
            favourite=row.favourite,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class Corpora(TableRepository[CorpusRow, Corpus]):
    """Uploaded training corpora; the files themselves live under the data directory."""

    row_type = CorpusRow

    def create(
        self, record_id: str, name: str, size_bytes: int, documents: int, local_path: str
    ) -> Corpus:
        self._session.add(
            CorpusRow(
                id=record_id,
                name=name,
                size_bytes=size_bytes,
                documents=documents,
                local_path=local_path,
                created_at=utc_now(),
            )
        )
        return self._stored(record_id)

    def list(self) -> tuple[Corpus, ...]:
        """Every corpus, newest first."""
        query = select(CorpusRow).order_by(CorpusRow.created_at.desc(), CorpusRow.id)
        return self._all(query)

    def delete(self, record_id: str) -> bool:
        return self._delete(record_id)

    def _from_row(self, row: CorpusRow) -> Corpus:
        return Corpus(
            id=row.id,
            name=row.name,
            size_bytes=row.size_bytes,
            documents=row.documents,
            local_path=row.local_path,
            created_at=row.created_at,
        )


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True)


_METRIC_INTS = frozenset({"step", "tokens", "dead_features", "time_unix_ms"})


def _metric_row(run_id: str, metrics: dict[str, Any]) -> dict[str, object]:
    unknown = set(metrics) - set(TRAINING_METRIC_FIELDS)
    if unknown:
        raise ValueError(f"unknown training metric(s) {sorted(unknown)}")
    row: dict[str, object] = {"run_id": run_id}
    for field in TRAINING_METRIC_FIELDS:
        value = metrics.get(field, 0)
        if field == "eval":
            row[field] = bool(value)
        elif field in _METRIC_INTS:
            row[field] = int(value)
        else:
            # float() also takes numpy and torch scalars, which the drivers cannot bind.
            value = float(value)
            row[field] = None if math.isnan(value) else value
    return row


def _training_metrics(row: TrainingMetricRow) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for field in TRAINING_METRIC_FIELDS:
        value = getattr(row, field)
        metrics[field] = math.nan if value is None else value
    return metrics
