"""Operations in the database, read back as `OperationSnapshot`s."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from inference_service.operations.types import (
    FINISHED_STATES,
    UNFINISHED_STATES,
    OperationSnapshot,
    OperationState,
)
from inference_service.storage.database import RecordNotFoundError, rowcount, utc_now
from inference_service.storage.repository import TableRepository
from inference_service.storage.tables import OperationRow

INTERRUPTED_MESSAGE = "interrupted by a restart"


@dataclass(frozen=True, slots=True)
class OperationPage:
    items: tuple[OperationSnapshot, ...]
    next_offset: int | None  # None on the last page


class Operations(TableRepository[OperationRow, OperationSnapshot]):
    row_type = OperationRow

    def create(
        self,
        *,
        id: str,
        kind: str,
        target: str,
        state: OperationState = OperationState.PENDING,
        stage: str = "",
        bytes_total: int | None = None,
    ) -> OperationSnapshot:
        now = utc_now()
        row = OperationRow(
            id=id,
            kind=kind,
            state=OperationState(state).value,
            stage=stage,
            bytes_done=0,
            bytes_total=bytes_total,
            error_message=None,
            target=target,
            params_json="{}",
            created_at=now,
            updated_at=now,
            finished_at=None,
        )
        self._session.add(row)
        self._session.flush()
        return self._from_row(row)

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
        page = self._all(query.limit(limit + 1).offset(offset))
        next_offset = offset + limit if len(page) > limit else None
        return OperationPage(page[:limit], next_offset)

    def save(self, snapshot: OperationSnapshot) -> None:
        """Write a snapshot the operations manager holds: create it if new, then move
        it to the snapshot's progress and state."""
        if self.get(snapshot.id) is None:
            self.create(
                id=snapshot.id,
                kind=snapshot.kind,
                target=snapshot.target,
                state=snapshot.state,
                stage=snapshot.stage,
            )
        finished = snapshot.state in FINISHED_STATES
        self.update_progress(
            snapshot.id,
            bytes_done=snapshot.bytes_done,
            bytes_total=snapshot.bytes_total or None,
            stage=snapshot.stage,
            state=None if finished else snapshot.state,
        )
        if finished:
            self.finish(snapshot.id, snapshot.state, snapshot.error_message or None)

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
        values: dict[str, object] = {"bytes_done": bytes_done, "updated_at": utc_now()}
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
    ) -> OperationSnapshot:
        """Move an unfinished operation to a final state."""
        state = OperationState(state)
        if state not in FINISHED_STATES:
            raise ValueError(f"{state} is not a final state")
        now = utc_now()
        self._update_unfinished(
            operation_id,
            {
                "state": state.value,
                "error_message": error_message,
                "updated_at": now,
                "finished_at": now,
            },
        )
        return self._stored(operation_id)

    def list_unfinished(self) -> tuple[OperationSnapshot, ...]:
        query = (
            select(OperationRow)
            .where(OperationRow.state.in_([s.value for s in UNFINISHED_STATES]))
            .order_by(OperationRow.created_at, OperationRow.id)
        )
        return self._all(query)

    def mark_interrupted(self, operation_ids: Iterable[str]) -> int:
        """Fail operations a restart cut short; returns how many were still unfinished."""
        ids = list(operation_ids)
        if not ids:
            return 0
        now = utc_now()
        return rowcount(
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

    def count(self) -> int:
        return self._session.scalar(select(func.count()).select_from(OperationRow)) or 0

    def _update_unfinished(self, operation_id: str, values: dict[str, object]) -> None:
        matched = rowcount(
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

    def _from_row(self, row: OperationRow) -> OperationSnapshot:
        return OperationSnapshot(
            id=row.id,
            kind=row.kind,
            state=OperationState(row.state),
            stage=row.stage,
            target=row.target,
            bytes_done=row.bytes_done,
            bytes_total=row.bytes_total or 0,
            error_message=row.error_message or "",
            created_at_unix_ms=_unix_ms(row.created_at),
            updated_at_unix_ms=_unix_ms(row.updated_at),
            finished_at_unix_ms=_unix_ms(row.finished_at),
        )


def _unix_ms(value: datetime | None) -> int:
    return int(value.timestamp() * 1000) if value is not None else 0
