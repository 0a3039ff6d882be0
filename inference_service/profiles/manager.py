"""Steering profiles: saving, checking against the attached SAE, activating.

A profile is bound to the SAE it was made with, identified by the SHA-256 of its
weights; it applies only while that SAE is attached. One profile at most is
active. The active one is saved in the database (the `active` flag) as well as in
`SteeringState`, so it survives restarts:

- `restore_active()` re-applies the saved profile when its SAE is attached. Call it
  at start-up and again after every attach: when the SAE is missing (not attached,
  or another one), the profile stays saved as active but does not steer, and comes
  back by itself once its SAE is attached again. Detaching clears `SteeringState`
  only, so it is the same case.
- `Profile.active` in responses reports what steers now (`SteeringState`), not the
  saved intention.
- `deactivate()` clears both.

Every change is published as a `ProfileChanged` through the callable the server
hands in. Every method blocks on the database (or, for `resolve`, usually only on memory):
call them through `asyncio.to_thread` from async code.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from inference_service.errors import (
    IncompatibleSaeError,
    InvalidArgumentError,
    ProfileNotFoundError,
)
from inference_service.profiles import schema
from inference_service.profiles.store import DEFAULT_TTL_S, ProfileStore, exists_error
from inference_service.profiles.types import (
    Profile,
    ProfileSae,
    validate_description,
    validate_name,
)
from inference_service.sae.active import ActiveSae
from inference_service.steering.state import SteeringState
from inference_service.steering.types import SteeringFeature, SteeringSet, validate_features
from inference_service.storage import Database, RecordNotFoundError

log = logging.getLogger(__name__)


class ProfileChange(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    ACTIVATED = "activated"
    DEACTIVATED = "deactivated"


@dataclass(frozen=True)
class ProfileChanged:
    """A profile and what happened to it (an event)."""

    name: str
    change: ProfileChange


class ImportResult(NamedTuple):
    profile: Profile
    mismatches: tuple[str, ...]  # empty unless `force` saved a mismatching profile


class ProfileManager:
    def __init__(
        self,
        db: Database,
        steering_state: SteeringState,
        *,
        served_model: Callable[[], str | None] | None = None,
        cache_ttl_s: float = DEFAULT_TTL_S,
        publish: Callable[[ProfileChanged], None] = lambda event: None,
    ) -> None:
        """`served_model` names the served model when no SAE is attached (the attached
        SAE names it otherwise); it only completes import reports.
        `cache_ttl_s` bounds how long another replica's changes stay unseen.
        `publish` is told every change (it must not block)."""
        self._steering = steering_state
        self._publish = publish
        self._served_model = served_model
        self._store = ProfileStore(db, ttl_s=cache_ttl_s)
        # Serialises activation changes, so the database flag and SteeringState agree.
        self._lock = threading.RLock()

    # ---- reading ---------------------------------------------------------------------

    def list(self) -> tuple[Profile, ...]:
        return tuple(self._store.all().values())

    def get(self, name: str) -> Profile:
        profile = self._store.get(name)
        if profile is None:
            raise _not_found(name)
        return profile

    def active_name(self) -> str | None:
        """The profile steering now, if any."""
        active = self._steering.active_profile
        return active.name if active is not None else None

    def resolve(self, name: str) -> SteeringSet:
        """The steering of profile `name` for one request; the same checks as `activate`.

        Cheap: a dictionary lookup, plus a database read when the snapshot is stale.
        """
        profile = self.get(name)
        self._check_applicable(profile, self._steering.require_target())
        return profile.steering

    # ---- changing --------------------------------------------------------------------

    def create(
        self, name: str, description: str = "", features: Iterable[SteeringFeature] | None = None
    ) -> Profile:
        """Saves a profile for the attached SAE; no features saves the live steering's."""
        validate_name(name)
        validate_description(description)
        target = self._steering.require_target()
        chosen = tuple(features or ()) or self._steering.live.features
        checked = validate_features(chosen, target.d_sae)
        now = datetime.now(UTC)
        profile = Profile(
            name=name,
            description=description,
            model=target.model_name,
            sae=_sae_of(target),
            features=checked,
            created_at=now,
            updated_at=now,
        )
        saved = self._store.save(profile)
        log.info("profile %s saved (%d features)", name, len(checked))
        self._publish(ProfileChanged(name, ProfileChange.CREATED))
        return saved

    def update(
        self,
        name: str,
        *,
        description: str | None = None,
        features: Iterable[SteeringFeature] | None = None,
    ) -> Profile:
        """Changes what is given; features are checked against the profile's own SAE,
        so a profile can be edited while its SAE is not attached."""
        current = self.get(name)
        if description is not None:
            validate_description(description)
        checked = None if features is None else validate_features(features, current.sae.d_sae)
        with self._lock:
            try:
                updated = self._store.update(name, description=description, features=checked)
            except RecordNotFoundError:
                raise _not_found(name) from None
            self._publish(ProfileChanged(name, ProfileChange.UPDATED))
            self._reapply_if_active(updated)
        return updated

    def delete(self, name: str) -> None:
        with self._lock:
            if not self._store.delete(name):
                raise _not_found(name)
            if self.active_name() == name:
                self._steering.deactivate()
                self._publish(ProfileChanged(name, ProfileChange.DEACTIVATED))
            self._publish(ProfileChanged(name, ProfileChange.DELETED))
        log.info("profile %s deleted", name)

    def activate(self, name: str) -> Profile:
        with self._lock:
            profile = self.get(name)
            self._check_applicable(profile, self._steering.require_target())
            try:
                self._store.record_active(name)
            except RecordNotFoundError:
                raise _not_found(name) from None
            self._steering.activate(name, profile.steering)
            self._publish(ProfileChanged(name, ProfileChange.ACTIVATED))
        log.info("profile %s activated", name)
        return profile

    def deactivate(self) -> str | None:
        """Returns to the live steering; the name of the profile that was active, if any."""
        with self._lock:
            recorded = self._store.recorded_active()
            self._store.record_active(None)
            previous = self._steering.deactivate()
            if previous or recorded:
                self._publish(ProfileChanged(previous or recorded or "", ProfileChange.DEACTIVATED))
        return previous or recorded

    def restore_active(self) -> str | None:
        """Re-applies the profile saved as active when its SAE is attached; its name,
        or None when nothing was applied. Safe to call any time (start-up, after attach)."""
        with self._lock:
            name = self._store.recorded_active()
            if name is None or self.active_name() == name:
                return name
            profile = self._store.get(name)
            target = self._steering.target()
            if profile is None or target is None:
                return None
            try:
                self._check_applicable(profile, target)
            except IncompatibleSaeError as exc:
                log.info("profile %s stays inactive: %s", name, exc.message)
                return None
            self._steering.activate(name, profile.steering)
            self._publish(ProfileChanged(name, ProfileChange.ACTIVATED))
        log.info("profile %s re-activated", name)
        return name

    # ---- exchange --------------------------------------------------------------------

    def export_json(self, name: str) -> str:
        return schema.dumps(self.get(name))

    def import_json(
        self, text: str, *, overwrite: bool = False, force: bool = False
    ) -> ImportResult:
        """Saves an exported profile. Mismatches with the served model and attached SAE
        are all collected; they refuse the import unless `force`."""
        document = schema.loads(text)
        existed = self._store.get(document.name) is not None
        if not overwrite and existed:
            raise exists_error(document.name)
        target = self._steering.target()
        mismatches = tuple(self._mismatches(document, target))
        if mismatches and not force:
            raise IncompatibleSaeError(
                f"Profile '{document.name}' does not match what is loaded: "
                + "; ".join(mismatches)
                + ". Attach the profile's SAE, or import with `force` to save it anyway.",
                param="json",
            )
        same_sae = target is not None and target.weights_sha256 == document.sae.weights_sha256
        now = datetime.now(UTC)
        profile = Profile(
            name=document.name,
            description=document.description,
            model=document.model,
            sae=ProfileSae(
                sae_id=target.sae_id if same_sae and target is not None else "",
                name=document.sae.name,
                weights_sha256=document.sae.weights_sha256,
                hook_name=document.sae.hook_name,
                d_sae=document.sae.d_sae,
            ),
            features=document.features,
            created_at=now,
            updated_at=now,
        )
        with self._lock:
            saved = self._store.save(profile, overwrite=overwrite)
            change = ProfileChange.UPDATED if existed else ProfileChange.CREATED
            self._publish(ProfileChanged(saved.name, change))
            self._reapply_if_active(saved)
        if mismatches:
            log.warning("profile %s imported despite: %s", saved.name, "; ".join(mismatches))
        return ImportResult(saved, mismatches)

    # ---- internals -------------------------------------------------------------------

    def _check_applicable(self, profile: Profile, target: ActiveSae) -> None:
        if profile.sae.weights_sha256 != target.weights_sha256:
            raise IncompatibleSaeError(
                f"Profile '{profile.name}' steers SAE '{profile.sae.name}' (weights "
                f"sha256 {profile.sae.weights_sha256}), but the attached SAE "
                f"'{target.sae_name}' has weights sha256 {target.weights_sha256}. "
                "Attach the profile's SAE first.",
                param="name",
            )
        if profile.sae.d_sae == target.d_sae:
            return  # saved features were checked against this width; resolve stays cheap
        try:
            validate_features(profile.features, target.d_sae)
        except InvalidArgumentError as exc:  # only a forced import gets here
            raise IncompatibleSaeError(
                f"Profile '{profile.name}' cannot steer the attached SAE: {exc.message}",
                param="name",
            ) from None

    def _reapply_if_active(self, profile: Profile) -> None:
        """After a write to the profile steering now: steer with the new version, or stop."""
        if self.active_name() != profile.name:
            return
        target = self._steering.target()
        try:
            if target is None:
                raise IncompatibleSaeError("no SAE attached")
            self._check_applicable(profile, target)
        except IncompatibleSaeError as exc:
            log.warning("profile %s deactivated: %s", profile.name, exc.message)
            self._steering.deactivate()
            self._publish(ProfileChanged(profile.name, ProfileChange.DEACTIVATED))
            return
        self._steering.activate(profile.name, profile.steering)

    def _mismatches(
        self, document: schema.ProfileDocument, target: ActiveSae | None
    ) -> Iterator[str]:
        served = target.model_name if target is not None else None
        if served is None and self._served_model is not None:
            served = self._served_model()
        if served is not None and served != document.model:
            yield (
                f"model: the profile was made on '{document.model}', the served model is '{served}'"
            )
        if target is None:
            yield (
                f"sae: no SAE is attached; the profile steers '{document.sae.name}' "
                f"(weights sha256 {document.sae.weights_sha256})"
            )
            return
        sae = document.sae
        if sae.weights_sha256 != target.weights_sha256:
            yield (
                f"sae.weights_sha256: the profile's SAE '{sae.name}' has {sae.weights_sha256}, "
                f"the attached SAE '{target.sae_name}' has {target.weights_sha256}"
            )
        if sae.hook_name != target.hook_name:
            yield (
                f"sae.hook_name: the profile steers at '{sae.hook_name}', the attached SAE "
                f"is at '{target.hook_name}'"
            )
        if sae.d_sae != target.d_sae:
            yield (
                f"sae.d_sae: the profile's SAE has {sae.d_sae} features, the attached SAE "
                f"has {target.d_sae}"
            )
        for n, feature in enumerate(document.features):
            if feature.index >= target.d_sae:
                yield (
                    f"features[{n}].index {feature.index} is out of range for the attached "
                    f"SAE (0 to {target.d_sae - 1})"
                )


def _sae_of(target: ActiveSae) -> ProfileSae:
    return ProfileSae(
        sae_id=target.sae_id,
        name=target.sae_name,
        weights_sha256=target.weights_sha256,
        hook_name=target.hook_name,
        d_sae=target.d_sae,
    )


def _not_found(name: str) -> ProfileNotFoundError:
    return ProfileNotFoundError(
        f"No profile is named '{name}'; list them with ProfileService.ListProfiles.", param="name"
    )
