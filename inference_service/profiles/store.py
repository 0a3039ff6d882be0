"""Profiles in the database, with an in-memory snapshot for the per-request path.

Reads come from a snapshot of every profile (a few hundred at most), swapped by
reference. A write through this store drops it at once; otherwise it is re-read
after `ttl_s`, which bounds how long a change made by another replica sharing
the PostgreSQL database stays unseen. Methods are blocking: call them from a
worker thread (`asyncio.to_thread`) when on the event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from inference_service.profiles import schema
from inference_service.profiles.types import Profile, ProfileExistsError, ProfileSae
from inference_service.steering.types import SteeringFeature
from inference_service.storage import Database, Repositories, run
from inference_service.storage.records import ProfileRecord
from inference_service.storage.repositories import RecordExistsError

T = TypeVar("T")

DEFAULT_TTL_S = 2.0


@dataclass(frozen=True)
class _Snapshot:
    profiles: Mapping[str, Profile]  # by name, in name order
    recorded_active: str | None
    loaded_at: float  # time.monotonic()


class ProfileStore:
    def __init__(
        self,
        db: Database,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._ttl_s = ttl_s
        self._clock = clock
        # Held while a write commits and while the snapshot is refilled, so a refill
        # that read the old rows cannot replace the drop that follows a write.
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    # ---- reading (from the snapshot) -------------------------------------------------

    def all(self) -> Mapping[str, Profile]:
        return self._current().profiles

    def get(self, name: str) -> Profile | None:
        return self._current().profiles.get(name)

    def recorded_active(self) -> str | None:
        """The profile saved as active: the one to re-activate after a restart."""
        return self._current().recorded_active

    # ---- writing (straight to the database) ------------------------------------------

    def save(self, profile: Profile, *, overwrite: bool = False) -> Profile:
        """Insert (or with `overwrite` replace) a profile; timestamps come from the database."""

        def work(tx: Repositories) -> ProfileRecord:
            return tx.profiles.save(
                name=profile.name,
                description=profile.description,
                model_name=profile.model,
                sae_id=profile.sae.sae_id,
                sae_name=profile.sae.name,
                weights_sha256=profile.sae.weights_sha256,
                hook_name=profile.sae.hook_name,
                d_sae=profile.sae.d_sae,
                features=[schema.feature_to_dict(f) for f in profile.features],
                overwrite=overwrite,
            )

        try:
            return _profile(self._write(work))
        except RecordExistsError:
            raise exists_error(profile.name) from None

    def update(
        self,
        name: str,
        *,
        description: str | None = None,
        features: tuple[SteeringFeature, ...] | None = None,
    ) -> Profile:
        """Raises storage's RecordNotFoundError when the profile is gone."""
        stored = None if features is None else [schema.feature_to_dict(f) for f in features]
        record = self._write(
            lambda tx: tx.profiles.update(name, description=description, features=stored)
        )
        return _profile(record)

    def delete(self, name: str) -> bool:
        return self._write(lambda tx: tx.profiles.delete(name))

    def record_active(self, name: str | None) -> None:
        self._write(lambda tx: tx.profiles.set_active(name))

    # ---- internals -------------------------------------------------------------------

    def _write(self, work: Callable[[Repositories], T]) -> T:
        with self._lock:
            try:
                return run(self._db, work)
            finally:
                self._snapshot = None

    def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot is not None and self._clock() - snapshot.loaded_at < self._ttl_s:
            return snapshot
        with self._lock:
            snapshot = self._snapshot
            if snapshot is None or self._clock() - snapshot.loaded_at >= self._ttl_s:
                loaded_at = self._clock()
                records = run(self._db, lambda tx: tx.profiles.list())
                active = next((r.name for r in records if r.active), None)
                profiles = {r.name: _profile(r) for r in records}
                snapshot = self._snapshot = _Snapshot(profiles, active, loaded_at)
            return snapshot


def exists_error(name: str) -> ProfileExistsError:
    return ProfileExistsError(
        f"A profile named '{name}' exists; choose another name, or delete or update it "
        "(an import can replace it with `overwrite`).",
        param="name",
    )


def _profile(record: ProfileRecord) -> Profile:
    return Profile(
        name=record.name,
        description=record.description,
        model=record.model_name,
        sae=ProfileSae(
            sae_id=record.sae_id,
            name=record.sae_name,
            weights_sha256=record.weights_sha256,
            hook_name=record.hook_name,
            d_sae=record.d_sae,
        ),
        features=tuple(
            schema.feature_from_dict(f, f"features[{n}]") for n, f in enumerate(record.features)
        ),
        created_at=record.created_at,
        updated_at=record.updated_at,
    )
