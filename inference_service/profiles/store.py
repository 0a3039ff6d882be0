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

from sqlalchemy.orm import Session

from inference_service.profiles.repository import Profiles
from inference_service.profiles.types import Profile, ProfileExistsError
from inference_service.steering.types import SteeringFeature
from inference_service.storage.database import Database, RecordExistsError

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
        try:
            return self._write(lambda profiles: profiles.save(profile, overwrite=overwrite))
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
        return self._write(
            lambda profiles: profiles.update(name, description=description, features=features)
        )

    def delete(self, name: str) -> bool:
        return self._write(lambda profiles: profiles.delete(name))

    def record_active(self, name: str | None) -> None:
        self._write(lambda profiles: profiles.set_active(name))

    # ---- internals -------------------------------------------------------------------

    def _write(self, work: Callable[[Profiles], T]) -> T:
        with self._lock:
            try:
                return self._db.run(lambda session: work(Profiles(session)))
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
                listed, active = self._db.run(_read_all)
                profiles = {p.name: p for p in listed}
                snapshot = self._snapshot = _Snapshot(profiles, active, loaded_at)
            return snapshot


def exists_error(name: str) -> ProfileExistsError:
    return ProfileExistsError(
        f"A profile named '{name}' exists; choose another name, or delete or update it "
        "(an import can replace it with `overwrite`).",
        param="name",
    )


def _read_all(session: Session) -> tuple[tuple[Profile, ...], str | None]:
    profiles = Profiles(session)
    return profiles.list(), profiles.active_name()
