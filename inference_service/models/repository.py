"""Cached models in the database. Folders are stored relative to the data directory
and come back as paths under it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from inference_service.models.types import (
    CachedModel,
    CachedModelState,
    ModelFile,
    ModelFormat,
    cached_model_id,
)
from inference_service.storage.database import upsert_insert, utc_now
from inference_service.storage.repository import TableRepository
from inference_service.storage.tables import ModelFileRow, ModelRecordRow


class ModelRecords(TableRepository[ModelRecordRow, CachedModel]):
    row_type = ModelRecordRow
    noun = "model record"

    def __init__(self, session: Session, data_dir: Path) -> None:
        super().__init__(session)
        self._data_dir = data_dir

    def upsert(
        self,
        *,
        repo_id: str,
        revision: str,
        format: ModelFormat,
        local_dir: Path | None,
        state: CachedModelState = CachedModelState.DOWNLOADING,
        commit_sha: str | None = None,
        parameter_count: int | None = None,
        size_bytes: int = 0,
    ) -> CachedModel:
        """Insert the model (repo_id, revision) or overwrite it, keeping created_at."""
        now = utc_now()
        model_id = cached_model_id(repo_id, revision)
        values: dict[str, object] = {
            "id": model_id,
            "repo_id": repo_id,
            "revision": revision,
            "commit_sha": commit_sha,
            "format": ModelFormat(format).value,
            "parameter_count": parameter_count,
            "size_bytes": size_bytes,
            "state": CachedModelState(state).value,
            "local_dir": ""
            if local_dir is None
            else local_dir.relative_to(self._data_dir).as_posix(),
            "created_at": now,
            "updated_at": now,
        }
        changed = {k: v for k, v in values.items() if k not in ("id", "created_at")}
        self._session.execute(
            upsert_insert(self._session, ModelRecordRow)
            .values(values)
            .on_conflict_do_update(index_elements=["id"], set_=changed)
        )
        return self._stored(model_id)

    def get(self, model_id: str) -> CachedModel | None:
        """The model with its files (`list` leaves them out)."""
        model = super().get(model_id)
        if model is None:
            return None
        files = self._session.scalars(
            select(ModelFileRow)
            .where(ModelFileRow.record_id == model_id)
            .order_by(ModelFileRow.path)
        )
        return dataclasses.replace(model, files=tuple(_model_file(f) for f in files))

    def list(self, *, state: CachedModelState | None = None) -> tuple[CachedModel, ...]:
        """Every model ordered by id, without files (use `get` for those)."""
        query = select(ModelRecordRow).order_by(ModelRecordRow.id)
        if state is not None:
            query = query.where(ModelRecordRow.state == CachedModelState(state).value)
        return self._all(query)

    def delete(self, model_id: str) -> bool:
        """Delete the model and (by cascade) its files; False if it was not there."""
        return self._delete(model_id)

    def set_state(self, model_id: str, state: CachedModelState) -> None:
        self._update(model_id, {"state": CachedModelState(state).value, "updated_at": utc_now()})

    def replace_files(self, model_id: str, files: Iterable[ModelFile]) -> None:
        """Make `files` the model's whole file list and its size their total."""
        files = list(files)
        self._update(
            model_id, {"size_bytes": sum(f.size_bytes for f in files), "updated_at": utc_now()}
        )
        self._session.execute(delete(ModelFileRow).where(ModelFileRow.record_id == model_id))
        if files:
            self._session.execute(
                insert(ModelFileRow),
                [
                    {
                        "record_id": model_id,
                        "path": f.path,
                        "size_bytes": f.size_bytes,
                        "sha256": f.sha256,
                        "verified": f.verified,
                    }
                    for f in files
                ],
            )

    def _from_row(self, row: ModelRecordRow) -> CachedModel:
        return CachedModel(
            id=row.id,
            repo_id=row.repo_id,
            revision=row.revision,
            commit_sha=row.commit_sha or "",
            format=ModelFormat(row.format),
            parameter_count=row.parameter_count or 0,
            size_bytes=row.size_bytes,
            state=CachedModelState(row.state),
            local_dir=self._data_dir / row.local_dir if row.local_dir else None,
            files=(),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


def _model_file(row: ModelFileRow) -> ModelFile:
    return ModelFile(
        path=row.path, size_bytes=row.size_bytes, sha256=row.sha256, verified=row.verified
    )
