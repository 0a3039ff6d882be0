"""Every attachment in the database: the history, and what start-up attaches again.

One row per attachment, from attach to detach. The newest row without
`detached_at` is the attachment the service held when it stopped; its
`steering_json` is the live steering on it. Each change is one transaction written
after the change in memory succeeded, so a process killed at any point leaves
either the old or the new state, never half of one:

- attach: the rows still open are closed and the new one inserted together;
- detach, a model switch: the row is closed;
- a steering change: the row's `steering_json` is rewritten whole.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from inference_service.storage.database import Database, rowcount, utc_now
from inference_service.storage.repository import TableRepository
from inference_service.storage.tables import SaeAttachmentRow


@dataclass(frozen=True)
class AttachmentEntry:
    id: str
    sae_id: str
    hook_name: str
    model_id: str
    dtype: str
    sae_bytes: int
    steering_json: str | None
    attached_at: datetime
    detached_at: datetime | None
    ended_by: str | None


class SaeAttachmentRecords(TableRepository[SaeAttachmentRow, AttachmentEntry]):
    row_type = SaeAttachmentRow
    noun = "SAE attachment"

    def insert(self, entry: AttachmentEntry) -> None:
        self._session.add(SaeAttachmentRow(**entry.__dict__))

    def close_open(self, ended_by: str, *, row_id: str | None = None) -> int:
        """Closes the open rows (only `row_id`'s when given); how many it closed."""
        statement = update(SaeAttachmentRow).where(SaeAttachmentRow.detached_at.is_(None))
        if row_id is not None:
            statement = statement.where(SaeAttachmentRow.id == row_id)
        return rowcount(self._session, statement.values(detached_at=utc_now(), ended_by=ended_by))

    def last_open(self) -> AttachmentEntry | None:
        return self._first(
            select(SaeAttachmentRow)
            .where(SaeAttachmentRow.detached_at.is_(None))
            .order_by(SaeAttachmentRow.attached_at.desc(), SaeAttachmentRow.id.desc())
        )

    def newest(self, limit: int) -> tuple[AttachmentEntry, ...]:
        return self._all(
            select(SaeAttachmentRow)
            .order_by(SaeAttachmentRow.attached_at.desc(), SaeAttachmentRow.id.desc())
            .limit(limit)
        )

    def set_steering(self, row_id: str, steering_json: str) -> None:
        self._update(row_id, {"steering_json": steering_json})

    def _from_row(self, row: SaeAttachmentRow) -> AttachmentEntry:
        return AttachmentEntry(
            id=row.id,
            sae_id=row.sae_id,
            hook_name=row.hook_name,
            model_id=row.model_id,
            dtype=row.dtype,
            sae_bytes=row.sae_bytes,
            steering_json=row.steering_json,
            attached_at=row.attached_at,
            detached_at=row.detached_at,
            ended_by=row.ended_by,
        )


class AttachmentHistory:
    """The writes `SaeManager` makes, one transaction each; all of them block."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def opened(
        self,
        *,
        sae_id: str,
        hook_name: str,
        model_id: str,
        dtype: str,
        sae_bytes: int,
        steering_json: str | None = None,
        closing_as: str = "replaced",
    ) -> str:
        """Records a new attachment, closing any still open as `closing_as`; its row id."""
        entry = AttachmentEntry(
            id=f"att-{secrets.token_hex(8)}",
            sae_id=sae_id,
            hook_name=hook_name,
            model_id=model_id,
            dtype=dtype,
            sae_bytes=sae_bytes,
            steering_json=steering_json,
            attached_at=utc_now(),
            detached_at=None,
            ended_by=None,
        )

        def write(session: Session) -> None:
            records = SaeAttachmentRecords(session)
            records.close_open(closing_as)
            records.insert(entry)

        self._db.run(write)
        return entry.id

    def closed(self, ended_by: str, row_id: str | None = None) -> None:
        """Closes `row_id`, or every open row."""
        self._db.run(
            lambda session: SaeAttachmentRecords(session).close_open(ended_by, row_id=row_id)
        )

    def last_open(self) -> AttachmentEntry | None:
        return self._db.run(lambda session: SaeAttachmentRecords(session).last_open())

    def newest(self, limit: int = 50) -> tuple[AttachmentEntry, ...]:
        return self._db.run(lambda session: SaeAttachmentRecords(session).newest(limit))

    def save_steering(self, row_id: str, steering_json: str) -> None:
        self._db.run(
            lambda session: SaeAttachmentRecords(session).set_steering(row_id, steering_json)
        )
