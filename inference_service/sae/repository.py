"""Cached SAEs' records in the database."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from inference_service.sae.types import SaeRecord, SaeState
from inference_service.storage.database import utc_now
from inference_service.storage.repository import TableRepository
from inference_service.storage.tables import SaeRecordRow


class SaeRecords(TableRepository[SaeRecordRow, SaeRecord]):
    row_type = SaeRecordRow
    noun = "SAE record"

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
        now = utc_now()
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
        return self._stored(record_id)

    def find_by_source(self, source_key: str) -> SaeRecord | None:
        return self._first(select(SaeRecordRow).where(SaeRecordRow.source_key == source_key))

    def list(self) -> tuple[SaeRecord, ...]:
        """Every record, newest first."""
        query = select(SaeRecordRow).order_by(SaeRecordRow.created_at.desc(), SaeRecordRow.id)
        return self._all(query)

    def delete(self, record_id: str) -> bool:
        return self._delete(record_id)

    def set_state(self, record_id: str, state: SaeState) -> None:
        self._update(record_id, {"state": SaeState(state).value, "updated_at": utc_now()})

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
            "updated_at": utc_now(),
        }
        if source is not None:
            values["source_json"] = json.dumps(source, sort_keys=True)
        self._update(record_id, values)

    def _from_row(self, row: SaeRecordRow) -> SaeRecord:
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
