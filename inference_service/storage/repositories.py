"""Repositories: the queries the service needs, returning detached domain records.

Repositories are bound to one session, so calls made through one `transaction()`
commit or roll back together::

    with transaction(db) as tx:
        tx.operations.create(...)
        tx.model_records.set_state(...)

From async code: `await asyncio.to_thread(run, db, lambda tx: tx.operations.get(op_id))`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Executable, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from inference_service.storage.database import Database
from inference_service.storage.records import (
    FINISHED_STATES,
    TRAINING_METRIC_FIELDS,
    UNFINISHED_STATES,
    UNFINISHED_TRAINING_STATES,
    CorpusRecord,
    ModelFile,
    ModelFormat,
    ModelRecord,
    ModelState,
    Operation,
    OperationPage,
    OperationState,
    ProfileRecord,
    SaeRecord,
    SaeState,
    TrainingRunRecord,
    TrainingState,
    TrainingTemplateRecord,
    model_record_id,
)
from inference_service.storage.tables import (
    CorpusRow,
    ModelFileRow,
    ModelRecordRow,
    OperationRow,
    ProfileRow,
    SaeRecordRow,
    TrainingMetricRow,
    TrainingRunRow,
    TrainingTemplateRow,
)

T = TypeVar("T")

INTERRUPTED_MESSAGE = "interrupted by a restart"
TRAINING_INTERRUPTED_STAGE = "interrupted by a service stop"


class RecordNotFoundError(LookupError):
    """The row a write addressed does not exist."""


class RecordExistsError(LookupError):
    """A create found a row with the same key."""


def _now() -> datetime:
    return datetime.now(UTC)


def _rowcount(session: Session, statement: Executable) -> int:
    """Rows an UPDATE or DELETE matched."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount


class ModelRecords:
    def __init__(self, session: Session) -> None:
        self._session = session

    def upsert(
        self,
        *,
        repo_id: str,
        revision: str,
        format: ModelFormat,
        local_dir: str,
        state: ModelState = ModelState.DOWNLOADING,
        commit_sha: str | None = None,
        parameter_count: int | None = None,
        size_bytes: int = 0,
    ) -> ModelRecord:
        """Insert the record for (repo_id, revision) or overwrite it, keeping created_at."""
        now = _now()
        record_id = model_record_id(repo_id, revision)
        values: dict[str, object] = {
            "id": record_id,
            "repo_id": repo_id,
            "revision": revision,
            "commit_sha": commit_sha,
            "format": ModelFormat(format).value,
            "parameter_count": parameter_count,
            "size_bytes": size_bytes,
            "state": ModelState(state).value,
            "local_dir": local_dir,
            "created_at": now,
            "updated_at": now,
        }
        dialect = self._session.get_bind().dialect.name
        upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(ModelRecordRow)
        changed = {k: v for k, v in values.items() if k not in ("id", "created_at")}
        self._session.execute(
            upsert.values(values).on_conflict_do_update(index_elements=["id"], set_=changed)
        )
        record = self.get(record_id)
        assert record is not None
        return record

    def get(self, record_id: str) -> ModelRecord | None:
        row = self._session.get(ModelRecordRow, record_id, populate_existing=True)
        if row is None:
            return None
        files = self._session.scalars(
            select(ModelFileRow)
            .where(ModelFileRow.record_id == record_id)
            .order_by(ModelFileRow.path)
        )
        return _model_record(row, tuple(_model_file(f) for f in files))

    def list(self, *, state: ModelState | None = None) -> tuple[ModelRecord, ...]:
        """Every record ordered by id, without files (use `get` for those)."""
        query = select(ModelRecordRow).order_by(ModelRecordRow.id)
        if state is not None:
            query = query.where(ModelRecordRow.state == ModelState(state).value)
        return tuple(_model_record(row) for row in self._session.scalars(query))

    def delete(self, record_id: str) -> bool:
        """Delete the record and (by cascade) its files; False if it was not there."""
        statement = delete(ModelRecordRow).where(ModelRecordRow.id == record_id)
        return _rowcount(self._session, statement) > 0

    def set_state(self, record_id: str, state: ModelState) -> None:
        self._update(record_id, state=ModelState(state).value)

    def replace_files(self, record_id: str, files: Iterable[ModelFile]) -> None:
        """Make `files` the record's whole file list and its size their total."""
        files = list(files)
        self._update(record_id, size_bytes=sum(f.size_bytes for f in files))
        self._session.execute(delete(ModelFileRow).where(ModelFileRow.record_id == record_id))
        if files:
            self._session.execute(
                insert(ModelFileRow),
                [
                    {
                        "record_id": record_id,
                        "path": f.path,
                        "size_bytes": f.size_bytes,
                        "sha256": f.sha256,
                        "verified": f.verified,
                    }
                    for f in files
                ],
            )

    def _update(self, record_id: str, **values: object) -> None:
        matched = _rowcount(
            self._session,
            update(ModelRecordRow)
            .where(ModelRecordRow.id == record_id)
            .values(updated_at=_now(), **values),
        )
        if matched == 0:
            raise RecordNotFoundError(f"model record {record_id!r} not found")


class Operations:
    def __init__(self, session: Session) -> None:
        self._session = session

    def create(
        self,
        *,
        id: str,
        kind: str,
        target: str,
        params_json: str = "{}",
        state: OperationState = OperationState.PENDING,
        stage: str = "",
        bytes_total: int | None = None,
    ) -> Operation:
        now = _now()
        row = OperationRow(
            id=id,
            kind=kind,
            state=OperationState(state).value,
            stage=stage,
            bytes_done=0,
            bytes_total=bytes_total,
            error_message=None,
            target=target,
            params_json=params_json,
            created_at=now,
            updated_at=now,
            finished_at=None,
        )
        self._session.add(row)
        self._session.flush()
        return _operation(row)

    def get(self, operation_id: str) -> Operation | None:
        row = self._session.get(OperationRow, operation_id, populate_existing=True)
        return None if row is None else _operation(row)

    def list(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        states: Sequence[OperationState] = (),
        kind: str | None = None,
    ) -> OperationPage:
        """Newest first; `next_offset` is None on the last page."""
        if limit < 1 or offset < 0:
            raise ValueError("limit must be >= 1 and offset >= 0")
        query = select(OperationRow).order_by(
            OperationRow.created_at.desc(), OperationRow.id.desc()
        )
        if states:
            query = query.where(OperationRow.state.in_([OperationState(s).value for s in states]))
        if kind is not None:
            query = query.where(OperationRow.kind == kind)
        rows = list(self._session.scalars(query.limit(limit + 1).offset(offset)))
        next_offset = offset + limit if len(rows) > limit else None
        return OperationPage(tuple(_operation(r) for r in rows[:limit]), next_offset)

    def update_progress(
        self,
        operation_id: str,
        *,
        bytes_done: int,
        bytes_total: int | None = None,
        stage: str | None = None,
        state: OperationState | None = None,
    ) -> None:
        """One UPDATE; fields left None keep their value. Finished operations are not touched."""
        values: dict[str, object] = {"bytes_done": bytes_done, "updated_at": _now()}
        if bytes_total is not None:
            values["bytes_total"] = bytes_total
        if stage is not None:
            values["stage"] = stage
        if state is not None:
            if OperationState(state) in FINISHED_STATES:
                raise ValueError("use finish() to end an operation")
            values["state"] = OperationState(state).value
        self._update_unfinished(operation_id, values)

    def finish(
        self, operation_id: str, state: OperationState, error_message: str | None = None
    ) -> Operation:
        """Move an unfinished operation to a final state."""
        state = OperationState(state)
        if state not in FINISHED_STATES:
            raise ValueError(f"{state} is not a final state")
        now = _now()
        self._update_unfinished(
            operation_id,
            {
                "state": state.value,
                "error_message": error_message,
                "updated_at": now,
                "finished_at": now,
            },
        )
        operation = self.get(operation_id)
        assert operation is not None
        return operation

    def list_unfinished(self) -> tuple[Operation, ...]:
        query = (
            select(OperationRow)
            .where(OperationRow.state.in_([s.value for s in UNFINISHED_STATES]))
            .order_by(OperationRow.created_at, OperationRow.id)
        )
        return tuple(_operation(r) for r in self._session.scalars(query))

    def mark_interrupted(self, operation_ids: Iterable[str]) -> int:
        """Fail operations a restart cut short; returns how many were still unfinished."""
        ids = list(operation_ids)
        if not ids:
            return 0
        now = _now()
        matched = _rowcount(
            self._session,
            update(OperationRow)
            .where(OperationRow.id.in_(ids))
            .where(OperationRow.state.in_([s.value for s in UNFINISHED_STATES]))
            .values(
                state=OperationState.FAILED.value,
                error_message=INTERRUPTED_MESSAGE,
                updated_at=now,
                finished_at=now,
            ),
        )
        return matched

    def count(self) -> int:
        return self._session.scalar(select(func.count()).select_from(OperationRow)) or 0

    def _update_unfinished(self, operation_id: str, values: dict[str, object]) -> None:
        matched = _rowcount(
            self._session,
            update(OperationRow)
            .where(OperationRow.id == operation_id)
            .where(OperationRow.state.in_([s.value for s in UNFINISHED_STATES]))
            .values(values),
        )
        if matched == 0:
            if self._session.get(OperationRow, operation_id) is None:
                raise RecordNotFoundError(f"operation {operation_id!r} not found")
            raise ValueError(f"operation {operation_id!r} has already finished")


class SaeRecords:
    def __init__(self, session: Session) -> None:
        self._session = session

    def create(
        self,
        *,
        record_id: str,
        name: str,
        source_key: str,
        source: dict[str, Any],
        format: str,
        state: SaeState,
        local_dir: str,
        spec: dict[str, Any],
        size_bytes: int = 0,
        weights_sha256: str | None = None,
    ) -> SaeRecord:
        now = _now()
        self._session.add(
            SaeRecordRow(
                id=record_id,
                name=name,
                source_key=source_key,
                source_json=json.dumps(source, sort_keys=True),
                format=format,
                state=SaeState(state).value,
                size_bytes=size_bytes,
                weights_sha256=weights_sha256,
                local_dir=local_dir,
                spec_json=json.dumps(spec, sort_keys=True),
                created_at=now,
                updated_at=now,
            )
        )
        self._session.flush()
        record = self.get(record_id)
        assert record is not None
        return record

    def get(self, record_id: str) -> SaeRecord | None:
        row = self._session.get(SaeRecordRow, record_id, populate_existing=True)
        return None if row is None else _sae_record(row)

    def find_by_source(self, source_key: str) -> SaeRecord | None:
        row = self._session.scalars(
            select(SaeRecordRow).where(SaeRecordRow.source_key == source_key)
        ).first()
        return None if row is None else _sae_record(row)

    def list(self) -> tuple[SaeRecord, ...]:
        """Every record, newest first."""
        query = select(SaeRecordRow).order_by(SaeRecordRow.created_at.desc(), SaeRecordRow.id)
        return tuple(_sae_record(row) for row in self._session.scalars(query))

    def delete(self, record_id: str) -> bool:
        statement = delete(SaeRecordRow).where(SaeRecordRow.id == record_id)
        return _rowcount(self._session, statement) > 0

    def set_state(self, record_id: str, state: SaeState) -> None:
        self._update(record_id, state=SaeState(state).value)

    def mark_ready(
        self,
        record_id: str,
        *,
        format: str,
        size_bytes: int,
        weights_sha256: str | None,
        spec: dict[str, Any],
        source: dict[str, Any] | None = None,
    ) -> None:
        values: dict[str, object] = {
            "state": SaeState.READY.value,
            "format": format,
            "size_bytes": size_bytes,
            "weights_sha256": weights_sha256,
            "spec_json": json.dumps(spec, sort_keys=True),
        }
        if source is not None:
            values["source_json"] = json.dumps(source, sort_keys=True)
        self._update(record_id, **values)

    def _update(self, record_id: str, **values: object) -> None:
        matched = _rowcount(
            self._session,
            update(SaeRecordRow)
            .where(SaeRecordRow.id == record_id)
            .values(updated_at=_now(), **values),
        )
        if matched == 0:
            raise RecordNotFoundError(f"SAE record {record_id!r} not found")


class Profiles:
    """Steering profiles by name; at most one carries the `active` flag."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def save(
        self,
        *,
        name: str,
        description: str,
        model_name: str,
        sae_id: str,
        sae_name: str,
        weights_sha256: str,
        hook_name: str,
        d_sae: int,
        features: Sequence[dict[str, Any]],
        overwrite: bool = False,
    ) -> ProfileRecord:
        """Insert a profile; an existing one of that name raises RecordExistsError, or
        with `overwrite` is replaced (keeping its created_at and active flag)."""
        now = _now()
        values: dict[str, object] = {
            "name": name,
            "description": description,
            "model_name": model_name,
            "sae_id": sae_id,
            "sae_name": sae_name,
            "weights_sha256": weights_sha256,
            "hook_name": hook_name,
            "d_sae": d_sae,
            "features_json": _features_json(features),
            "active": False,
            "created_at": now,
            "updated_at": now,
        }
        dialect = self._session.get_bind().dialect.name
        insert_ = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(ProfileRow)
        statement = insert_.values(values)
        if overwrite:
            kept = ("name", "active", "created_at")
            changed = {k: v for k, v in values.items() if k not in kept}
            statement = statement.on_conflict_do_update(index_elements=["name"], set_=changed)
        else:
            # ON CONFLICT rather than a read first: two replicas may race on one name.
            statement = statement.on_conflict_do_nothing(index_elements=["name"])
        # RETURNING, not rowcount: the ORM insert path does not report rowcount reliably.
        if self._session.scalar(statement.returning(ProfileRow.name)) is None:
            raise RecordExistsError(f"profile {name!r} exists")
        record = self.get(name)
        assert record is not None
        return record

    def get(self, name: str) -> ProfileRecord | None:
        row = self._session.get(ProfileRow, name, populate_existing=True)
        return None if row is None else _profile(row)

    def list(self) -> tuple[ProfileRecord, ...]:
        """Every profile, by name."""
        query = select(ProfileRow).order_by(ProfileRow.name)
        return tuple(_profile(row) for row in self._session.scalars(query))

    def update(
        self,
        name: str,
        *,
        description: str | None = None,
        features: Sequence[dict[str, Any]] | None = None,
    ) -> ProfileRecord:
        """Change the fields given; None keeps a field."""
        values: dict[str, object] = {"updated_at": _now()}
        if description is not None:
            values["description"] = description
        if features is not None:
            values["features_json"] = _features_json(features)
        statement = update(ProfileRow).where(ProfileRow.name == name).values(values)
        if _rowcount(self._session, statement) == 0:
            raise RecordNotFoundError(f"profile {name!r} not found")
        record = self.get(name)
        assert record is not None
        return record

    def delete(self, name: str) -> bool:
        statement = delete(ProfileRow).where(ProfileRow.name == name)
        return _rowcount(self._session, statement) > 0

    def set_active(self, name: str | None) -> None:
        """Make `name` the one active profile, or none when None."""
        self._session.execute(
            update(ProfileRow).where(ProfileRow.active.is_(True)).values(active=False)
        )
        if name is None:
            return
        statement = update(ProfileRow).where(ProfileRow.name == name).values(active=True)
        if _rowcount(self._session, statement) == 0:
            raise RecordNotFoundError(f"profile {name!r} not found")

    def active(self) -> ProfileRecord | None:
        row = self._session.scalars(select(ProfileRow).where(ProfileRow.active.is_(True))).first()
        return None if row is None else _profile(row)


class TrainingRuns:
    """SAE training runs, newest first; their metrics live in `TrainingMetrics`."""

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

    def __init__(self, session: Session) -> None:
        self._session = session

    def create(
        self,
        record_id: str,
        name: str,
        model: str,
        config: dict[str, Any],
        total_steps: int,
    ) -> TrainingRunRecord:
        """A queued run at step 0."""
        now = _now()
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
        self._session.flush()
        record = self.get(record_id)
        assert record is not None
        return record

    def get(self, record_id: str) -> TrainingRunRecord | None:
        row = self._session.get(TrainingRunRow, record_id, populate_existing=True)
        return None if row is None else _training_run(row)

    def list(self, limit: int = 50, offset: int = 0) -> tuple[TrainingRunRecord, ...]:
        """Newest first."""
        if limit < 1 or offset < 0:
            raise ValueError("limit must be >= 1 and offset >= 0")
        query = (
            select(TrainingRunRow)
            .order_by(TrainingRunRow.created_at.desc(), TrainingRunRow.id)
            .limit(limit)
            .offset(offset)
        )
        return tuple(_training_run(row) for row in self._session.scalars(query))

    def count(self) -> int:
        return self._session.scalar(select(func.count()).select_from(TrainingRunRow)) or 0

    def update(self, record_id: str, **fields: Any) -> TrainingRunRecord:
        """Change the fields given (names as in TrainingRunRecord) and bump updated_at."""
        unknown = set(fields) - self._UPDATABLE
        if unknown:
            raise TypeError(f"training runs have no updatable field(s) {sorted(unknown)}")
        values: dict[str, object] = {"updated_at": _now()}
        for field, value in fields.items():
            if field == "state":
                values["state"] = TrainingState(value).value
            elif field == "config":
                values["config_json"] = _json(value)
            elif field in ("latest", "final_eval"):
                values[f"{field}_json"] = None if value is None else _json(value)
            else:
                values[field] = value
        statement = update(TrainingRunRow).where(TrainingRunRow.id == record_id).values(values)
        if _rowcount(self._session, statement) == 0:
            raise RecordNotFoundError(f"training run {record_id!r} not found")
        record = self.get(record_id)
        assert record is not None
        return record

    def delete(self, record_id: str) -> bool:
        """Delete the run and its metrics; False if it was not there."""
        # Explicitly as well as by ON DELETE CASCADE, so it holds on a connection that
        # has SQLite's foreign keys off (an external tool's, say).
        self._session.execute(
            delete(TrainingMetricRow).where(TrainingMetricRow.run_id == record_id)
        )
        statement = delete(TrainingRunRow).where(TrainingRunRow.id == record_id)
        return _rowcount(self._session, statement) > 0

    def mark_interrupted(self) -> int:
        """Interrupt the runs a service stop left without a trainer; returns how many."""
        return _rowcount(
            self._session,
            update(TrainingRunRow)
            .where(TrainingRunRow.state.in_([s.value for s in UNFINISHED_TRAINING_STATES]))
            .values(
                state=TrainingState.INTERRUPTED.value,
                stage=TRAINING_INTERRUPTED_STAGE,
                updated_at=_now(),
            ),
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
        dialect = self._session.get_bind().dialect.name
        insert_ = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(
            TrainingMetricRow
        )
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
        return _rowcount(self._session, statement)


class TrainingTemplates:
    """Saved training configurations; names are unique, favourites list first."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def create(
        self,
        record_id: str,
        name: str,
        description: str,
        config: dict[str, Any],
        favourite: bool = False,
    ) -> TrainingTemplateRecord:
        """Insert a template; one with the same name raises RecordExistsError."""
        now = _now()
        values: dict[str, object] = {
            "id": record_id,
            "name": name,
            "description": description,
            "config_json": _json(config),
            "favourite": favourite,
            "created_at": now,
            "updated_at": now,
        }
        dialect = self._session.get_bind().dialect.name
        insert_ = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(
            TrainingTemplateRow
        )
        # ON CONFLICT rather than a read first: two replicas may race on one name.
        statement = insert_.values(values).on_conflict_do_nothing(index_elements=["name"])
        if self._session.scalar(statement.returning(TrainingTemplateRow.id)) is None:
            raise RecordExistsError(f"training template {name!r} exists")
        record = self.get(record_id)
        assert record is not None
        return record

    def get(self, record_id: str) -> TrainingTemplateRecord | None:
        row = self._session.get(TrainingTemplateRow, record_id, populate_existing=True)
        return None if row is None else _training_template(row)

    def get_by_name(self, name: str) -> TrainingTemplateRecord | None:
        row = self._session.scalars(
            select(TrainingTemplateRow).where(TrainingTemplateRow.name == name)
        ).first()
        return None if row is None else _training_template(row)

    def list(self) -> tuple[TrainingTemplateRecord, ...]:
        """Favourites first, then by name."""
        query = select(TrainingTemplateRow).order_by(
            TrainingTemplateRow.favourite.desc(), TrainingTemplateRow.name
        )
        return tuple(_training_template(row) for row in self._session.scalars(query))

    def update(
        self,
        record_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        config: dict[str, Any] | None = None,
        favourite: bool | None = None,
    ) -> TrainingTemplateRecord:
        """Change the fields given; None keeps a field. Renaming onto another template's
        name raises RecordExistsError."""
        values: dict[str, object] = {"updated_at": _now()}
        if name is not None:
            values["name"] = name
        if description is not None:
            values["description"] = description
        if config is not None:
            values["config_json"] = _json(config)
        if favourite is not None:
            values["favourite"] = favourite
        statement = (
            update(TrainingTemplateRow).where(TrainingTemplateRow.id == record_id).values(values)
        )
        try:
            # A savepoint, so the unique name's violation leaves the transaction usable
            # (PostgreSQL aborts the whole transaction otherwise).
            with self._session.begin_nested():
                matched = _rowcount(self._session, statement)
        except IntegrityError as error:
            raise RecordExistsError(f"training template {name!r} exists") from error
        if matched == 0:
            raise RecordNotFoundError(f"training template {record_id!r} not found")
        record = self.get(record_id)
        assert record is not None
        return record

    def delete(self, record_id: str) -> bool:
        statement = delete(TrainingTemplateRow).where(TrainingTemplateRow.id == record_id)
        return _rowcount(self._session, statement) > 0


class Corpora:
    """Uploaded training corpora; the files themselves live under the data directory."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def create(
        self, record_id: str, name: str, size_bytes: int, documents: int, local_path: str
    ) -> CorpusRecord:
        self._session.add(
            CorpusRow(
                id=record_id,
                name=name,
                size_bytes=size_bytes,
                documents=documents,
                local_path=local_path,
                created_at=_now(),
            )
        )
        self._session.flush()
        record = self.get(record_id)
        assert record is not None
        return record

    def get(self, record_id: str) -> CorpusRecord | None:
        row = self._session.get(CorpusRow, record_id, populate_existing=True)
        return None if row is None else _corpus(row)

    def list(self) -> tuple[CorpusRecord, ...]:
        """Every corpus, newest first."""
        query = select(CorpusRow).order_by(CorpusRow.created_at.desc(), CorpusRow.id)
        return tuple(_corpus(row) for row in self._session.scalars(query))

    def delete(self, record_id: str) -> bool:
        statement = delete(CorpusRow).where(CorpusRow.id == record_id)
        return _rowcount(self._session, statement) > 0


@dataclass(frozen=True, slots=True)
class Repositories:
    """The repositories of one transaction."""

    model_records: ModelRecords
    operations: Operations
    sae_records: SaeRecords
    profiles: Profiles
    training_runs: TrainingRuns
    training_metrics: TrainingMetrics
    training_templates: TrainingTemplates
    corpora: Corpora


@contextmanager
def transaction(db: Database) -> Iterator[Repositories]:
    """Repositories sharing one transaction: committed on success, rolled back on error."""
    with db.session() as session:
        yield Repositories(
            model_records=ModelRecords(session),
            operations=Operations(session),
            sae_records=SaeRecords(session),
            profiles=Profiles(session),
            training_runs=TrainingRuns(session),
            training_metrics=TrainingMetrics(session),
            training_templates=TrainingTemplates(session),
            corpora=Corpora(session),
        )


def run(db: Database, work: Callable[[Repositories], T]) -> T:
    """`work` in one transaction; the shape `asyncio.to_thread` wants."""
    with transaction(db) as tx:
        return work(tx)


def _model_file(row: ModelFileRow) -> ModelFile:
    return ModelFile(
        path=row.path, size_bytes=row.size_bytes, sha256=row.sha256, verified=row.verified
    )


def _model_record(row: ModelRecordRow, files: tuple[ModelFile, ...] = ()) -> ModelRecord:
    return ModelRecord(
        id=row.id,
        repo_id=row.repo_id,
        revision=row.revision,
        commit_sha=row.commit_sha,
        format=ModelFormat(row.format),
        parameter_count=row.parameter_count,
        size_bytes=row.size_bytes,
        state=ModelState(row.state),
        local_dir=row.local_dir,
        created_at=row.created_at,
        updated_at=row.updated_at,
        files=files,
    )


def _operation(row: OperationRow) -> Operation:
    return Operation(
        id=row.id,
        kind=row.kind,
        state=OperationState(row.state),
        stage=row.stage,
        bytes_done=row.bytes_done,
        bytes_total=row.bytes_total,
        error_message=row.error_message,
        target=row.target,
        params_json=row.params_json,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def _sae_record(row: SaeRecordRow) -> SaeRecord:
    return SaeRecord(
        id=row.id,
        name=row.name,
        source_key=row.source_key,
        source=json.loads(row.source_json),
        format=row.format,
        state=SaeState(row.state),
        size_bytes=row.size_bytes,
        weights_sha256=row.weights_sha256,
        local_dir=row.local_dir,
        spec=json.loads(row.spec_json),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _features_json(features: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(features), sort_keys=True)


def _profile(row: ProfileRow) -> ProfileRecord:
    return ProfileRecord(
        name=row.name,
        description=row.description,
        model_name=row.model_name,
        sae_id=row.sae_id,
        sae_name=row.sae_name,
        weights_sha256=row.weights_sha256,
        hook_name=row.hook_name,
        d_sae=row.d_sae,
        features=tuple(json.loads(row.features_json)),
        active=row.active,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True)


def _training_run(row: TrainingRunRow) -> TrainingRunRecord:
    return TrainingRunRecord(
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


def _training_template(row: TrainingTemplateRow) -> TrainingTemplateRecord:
    return TrainingTemplateRecord(
        id=row.id,
        name=row.name,
        description=row.description,
        config=json.loads(row.config_json),
        favourite=row.favourite,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _corpus(row: CorpusRow) -> CorpusRecord:
    return CorpusRecord(
        id=row.id,
        name=row.name,
        size_bytes=row.size_bytes,
        documents=row.documents,
        local_path=row.local_path,
        created_at=row.created_at,
    )
