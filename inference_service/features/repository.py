"""Feature labels in the database, keyed by (SAE weights sha256, feature index)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from inference_service.features.types import FeatureLabel
from inference_service.storage.database import upsert_insert, utc_now
from inference_service.storage.tables import FeatureLabelRow


class FeatureLabels:
    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, sha: str, index: int) -> FeatureLabel | None:
        row = self._session.get(FeatureLabelRow, (sha, index))
        return None if row is None else _label(row)

    def for_indices(self, sha: str, indices: Sequence[int]) -> dict[int, FeatureLabel]:
        rows = self._session.scalars(
            select(FeatureLabelRow).where(
                FeatureLabelRow.sae_sha256 == sha, FeatureLabelRow.feature_index.in_(indices)
            )
        )
        return {row.feature_index: _label(row) for row in rows}

    def all_of(self, sha: str) -> list[FeatureLabel]:
        rows = self._session.scalars(
            select(FeatureLabelRow)
            .where(FeatureLabelRow.sae_sha256 == sha)
            .order_by(FeatureLabelRow.feature_index)
        )
        return [_label(row) for row in rows]

    def search(self, sha: str, query: str, limit: int) -> list[FeatureLabel]:
        """Labels whose label or notes contain `query`, any case, by feature index."""
        escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        rows = self._session.scalars(
            select(FeatureLabelRow)
            .where(
                FeatureLabelRow.sae_sha256 == sha,
                func.lower(FeatureLabelRow.label).like(pattern, escape="\\")
                | func.lower(FeatureLabelRow.notes).like(pattern, escape="\\"),
            )
            .order_by(FeatureLabelRow.feature_index)
            .limit(limit)
        )
        return [_label(row) for row in rows]

    def put(self, sha: str, label: FeatureLabel, *, overwrite: bool = True) -> bool:
        """Writes a label; False when one existed and `overwrite` is off."""
        values = {
            "sae_sha256": sha,
            "feature_index": label.index,
            "label": label.label,
            "notes": label.notes,
            "source": label.source,
            "updated_at": utc_now(),
        }
        statement = upsert_insert(self._session, FeatureLabelRow).values(values)
        keys = ["sae_sha256", "feature_index"]
        if overwrite:
            changed = {k: v for k, v in values.items() if k not in keys}
            statement = statement.on_conflict_do_update(index_elements=keys, set_=changed)
        else:
            statement = statement.on_conflict_do_nothing(index_elements=keys)
        returned = statement.returning(FeatureLabelRow.feature_index)
        return self._session.scalar(returned) is not None

    def delete(self, sha: str, index: int) -> None:
        self._session.execute(
            delete(FeatureLabelRow).where(
                FeatureLabelRow.sae_sha256 == sha, FeatureLabelRow.feature_index == index
            )
        )


def _label(row: FeatureLabelRow) -> FeatureLabel:
    return FeatureLabel(row.feature_index, row.label, row.notes, row.source)
