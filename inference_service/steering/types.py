"""Steering as plain values: which features, how, how much.

Strengths are in raw decoder-row units, as Neuronpedia uses them: ADD adds
`strength * W_dec[i]` to the hidden state, so a strength near a feature's typical
maximum activation pushes about as hard as the feature itself does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from inference_service.errors import InvalidArgumentError

SteeringMode = Literal["add", "clamp", "multiply"]
MODES: tuple[SteeringMode, ...] = ("add", "clamp", "multiply")
# Features one steering set may hold; the cost grows with each clamp or multiply.
MAX_FEATURES = 256


@dataclass(frozen=True)
class SteeringFeature:
    index: int
    mode: SteeringMode = "add"
    strength: float = 0.0
    normalize: bool = False  # divide the decoder row by its norm first (add only)
    label: str = ""

    def is_identity(self) -> bool:
        """True when the feature leaves every hidden state exactly as it is."""
        if self.mode == "add":
            return self.strength == 0.0
        if self.mode == "multiply":
            return self.strength == 1.0
        return False  # a clamp moves the feature to its target


@dataclass(frozen=True)
class SteeringSet:
    """Features to steer and whether they apply; immutable, swapped by reference."""

    features: tuple[SteeringFeature, ...] = ()
    enabled: bool = True

    @property
    def active(self) -> bool:
        return self.enabled and any(not f.is_identity() for f in self.features)


NO_STEERING = SteeringSet((), enabled=False)

ChoiceKind = Literal["global", "profile", "features", "disabled"]


@dataclass(frozen=True)
class SteeringChoice:
    """Where one request's steering comes from (precedence is the caller's business)."""

    kind: ChoiceKind = "global"
    profile: str = ""  # kind "profile"
    steering: SteeringSet = NO_STEERING  # kind "features"


FOLLOW_GLOBAL = SteeringChoice()


def validate_features(
    features: Iterable[SteeringFeature], d_sae: int | None, *, param: str = "features"
) -> tuple[SteeringFeature, ...]:
    """Checks every feature against the SAE's width; returns them as a tuple."""
    checked = tuple(features)
    if len(checked) > MAX_FEATURES:
        raise InvalidArgumentError(
            f"At most {MAX_FEATURES} features can be steered at once; got {len(checked)}.",
            param=param,
        )
    seen: set[int] = set()
    for n, feature in enumerate(checked):
        where = f"{param}[{n}]"
        if feature.mode not in MODES:
            raise InvalidArgumentError(
                f"{where}.mode must be one of {', '.join(MODES)}; got '{feature.mode}'.",
                param=f"{where}.mode",
            )
        if not math.isfinite(feature.strength):
            raise InvalidArgumentError(
                f"{where}.strength must be a finite number; got {feature.strength}.",
                param=f"{where}.strength",
            )
        if feature.index < 0 or (d_sae is not None and feature.index >= d_sae):
            limit = f"0 to {d_sae - 1}" if d_sae is not None else "0 or more"
            raise InvalidArgumentError(
                f"{where}.index {feature.index} is out of range: the attached SAE has "
                f"{d_sae} features ({limit}).",
                param=f"{where}.index",
            )
        if feature.index in seen:
            raise InvalidArgumentError(
                f"{where}.index {feature.index} appears twice; steer each feature once.",
                param=f"{where}.index",
            )
        seen.add(feature.index)
    return checked
