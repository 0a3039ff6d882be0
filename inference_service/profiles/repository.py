"""Profiles in the database, read back as `Profile`s; at most one carries the `active`
flag (the profile to re-activate after a restart)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import select, update

from inference_service.profiles import schema
from inference_service.profiles.types import Profile, ProfileSae
from inference_service.steering.types import SteeringFeature
from inference_service.storage.database import (
    RecordExistsError,
    upsert_insert,
    utc_now,
)
from inference_service.storage.repository import TableRepository
from inference_service.storage.tables import ProfileRow


class Profiles(TableRepository[ProfileRow, Profile]):
    row_type = ProfileRow
    noun = "profile"

    def save(self, profile: Profile, *, overwrite: bool = False) -> Profile:
        """Insert a profile; an existing one of that name raises RecordExistsError, or
        with `overwrite` is replaced (keeping its created_at and active flag).
        Timestamps come from the database, not from `profile`."""
        now = utc_now()
        values: dict[str, object] = {
            "name": profile.name,
            "description": profile.description,
            "model_name": profile.model,
            "sae_id": profile.sae.sae_id,
            "sae_name": profile.sae.name,
            "weights_sha256": profile.sae.weights_sha256,
            "hook_name": profile.sae.hook_name,
            "d_sae": profile.sae.d_sae,
            "features_json": _features_json(profile.features),
            "active": False,
            "created_at": now,
            "updated_at": now,
        }
        statement = upsert_insert(self._session, ProfileRow).values(values)
        if overwrite:
            kept = ("name", "active", "created_at")
            changed = {k: v for k, v in values.items() if k not in kept}
            statement = statement.on_conflict_do_update(index_elements=["name"], set_=changed)
        else:
            # ON CONFLICT rather than a read first: two replicas may race on one name.
            statement = statement.on_conflict_do_nothing(index_elements=["name"])
        # RETURNING, not rowcount: the ORM insert path does not report rowcount reliably.
        if self._session.scalar(statement.returning(ProfileRow.name)) is None:
            raise RecordExistsError(f"profile {profile.name!r} exists")
        return self._stored(profile.name)

    def list(self) -> tuple[Profile, ...]:
        """Every profile, by name."""
        query = select(ProfileRow).order_by(ProfileRow.name)
        return self._all(query)

    def update(
        self,
        name: str,
        *,
        description: str | None = None,
        features: Sequence[SteeringFeature] | None = None,
    ) -> Profile:
        """Change the fields given; None keeps a field."""
        values: dict[str, object] = {"updated_at": utc_now()}
        if description is not None:
            values["description"] = description
        if features is not None:
            values["features_json"] = _features_json(features)
        self._update(name, values)
        return self._stored(name)

    def delete(self, name: str) -> bool:
        return self._delete(name)

    def set_active(self, name: str | None) -> None:
        """Make `name` the one active profile, or none when None."""
        self._session.execute(
            update(ProfileRow).where(ProfileRow.active.is_(True)).values(active=False)
        )
        if name is not None:
            self._update(name, {"active": True})

    def active_name(self) -> str | None:
        return self._session.scalars(
            select(ProfileRow.name).where(ProfileRow.active.is_(True))
        ).first()

    def _from_row(self, row: ProfileRow) -> Profile:
        return Profile(
            name=row.name,
            description=row.description,
            model=row.model_name,
            sae=ProfileSae(
                sae_id=row.sae_id,
                name=row.sae_name,
                weights_sha256=row.weights_sha256,
                hook_name=row.hook_name,
                d_sae=row.d_sae,
            ),
            features=tuple(
                schema.feature_from_dict(f, f"features[{n}]")
                for n, f in enumerate(json.loads(row.features_json))
            ),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


def _features_json(features: Sequence[SteeringFeature]) -> str:
    return json.dumps([schema.feature_to_dict(f) for f in features], sort_keys=True)
