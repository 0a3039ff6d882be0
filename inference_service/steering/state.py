"""The global steering: live features and the active profile, for the attached SAE.

Requests without steering of their own follow `effective()`: the active profile
when one is active, else the live features. Every change swaps an immutable
`SteeringSet` by reference, so a forward pass reads one version or the next.
What is attached is read from `sae.active`, never kept here. Each change is
published (`SteeringChanged`) through the callable the server hands in.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from inference_service.errors import NoSaeAttachedError
from inference_service.sae.active import ActiveSae
from inference_service.steering.types import (
    NO_STEERING,
    SteeringFeature,
    SteeringSet,
    validate_features,
)


@dataclass(frozen=True)
class ActiveProfile:
    name: str
    steering: SteeringSet


class SteeringSource(enum.Enum):
    """What changed the global steering."""

    GLOBAL = "global"  # the live features or their switch
    PROFILE = "profile"  # a profile activated, deactivated or changed while active
    SAE = "sae"  # the attached SAE went, and the features that named its features


@dataclass(frozen=True)
class SteeringChanged:
    """The global steering after a change (an event)."""

    source: SteeringSource
    live: SteeringSet
    active_profile: str  # empty when none is active
    effective: SteeringSet


class SteeringState:
    def __init__(
        self,
        active: Callable[[], ActiveSae | None],
        publish: Callable[[SteeringChanged], None] = lambda event: None,
    ) -> None:
        """`active` reads the attached SAE (`ActiveSaeSlot.get`); `publish` is told
        every change (from any thread; it must not block)."""
        self._target = active
        self._publish = publish
        self._lock = threading.Lock()
        self._live = SteeringSet((), enabled=True)
        self._profile: ActiveProfile | None = None

    # ---- reading ---------------------------------------------------------------------

    def target(self) -> ActiveSae | None:
        """The attached SAE that steering acts on, if any."""
        return self._target()

    def require_target(self) -> ActiveSae:
        target = self._target()
        if target is None:
            raise NoSaeAttachedError(
                "Steering needs an SAE attached to the model; attach one first "
                "with SaeService.AttachSae."
            )
        return target

    @property
    def live(self) -> SteeringSet:
        return self._live

    @property
    def active_profile(self) -> ActiveProfile | None:
        return self._profile

    def effective(self) -> SteeringSet:
        """What a request without its own steering gets now."""
        return self.effective_for(self._target())

    def effective_for(self, active: ActiveSae | None) -> SteeringSet:
        """What a request without its own steering gets in a pass that uses `active`."""
        if active is None:
            return NO_STEERING
        profile = self._profile
        return profile.steering if profile is not None else self._live

    # ---- changing ----------------------------------------------------------------------

    def set_live(self, features: Iterable[SteeringFeature], enabled: bool | None = None) -> None:
        target = self.require_target()
        checked = validate_features(features, target.d_sae)
        with self._lock:
            keep = self._live.enabled if enabled is None else enabled
            self._live = SteeringSet(checked, keep)
            self._changed(SteeringSource.GLOBAL)

    def clear(self) -> None:
        with self._lock:
            self._live = SteeringSet((), self._live.enabled)
            self._changed(SteeringSource.GLOBAL)

    def set_enabled(self, enabled: bool) -> None:
        with self._lock:
            self._live = SteeringSet(self._live.features, enabled)
            self._changed(SteeringSource.GLOBAL)

    def activate(self, name: str, steering: SteeringSet) -> None:
        target = self.require_target()
        validate_features(steering.features, target.d_sae)
        with self._lock:
            self._profile = ActiveProfile(name, steering)
            self._changed(SteeringSource.PROFILE)

    def deactivate(self) -> str | None:
        with self._lock:
            previous, self._profile = self._profile, None
            if previous is not None:
                self._changed(SteeringSource.PROFILE)
        return previous.name if previous is not None else None

    def forget_target(self) -> None:
        """The SAE was detached: the live features named its features, so drop them."""
        with self._lock:
            had_any = bool(self._live.features) or self._profile is not None
            self._live = SteeringSet((), self._live.enabled)
            self._profile = None
            if had_any:
                self._changed(SteeringSource.SAE)

    def _changed(self, source: SteeringSource) -> None:
        # Under the lock, so events leave in the order of the changes.
        profile = self._profile
        self._publish(
            SteeringChanged(
                source=source,
                live=self._live,
                active_profile=profile.name if profile is not None else "",
                effective=self.effective(),
            )
        )
