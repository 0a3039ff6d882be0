"""Profiles as plain values, and the rules for their names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from inference_service.errors import AlreadyExistsError, InvalidArgumentError
from inference_service.steering.types import SteeringFeature, SteeringSet

NAME_MAX_CHARS = 64
DESCRIPTION_MAX_CHARS = 2000
_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{NAME_MAX_CHARS}}}")


class ProfileExistsError(AlreadyExistsError):
    """A profile of that name exists (409 in the bridge)."""


@dataclass(frozen=True)
class ProfileSae:
    """The SAE a profile steers. `weights_sha256` is its identity; `sae_id` is the
    local cache id when it was saved (empty when imported without that SAE)."""

    sae_id: str
    name: str
    weights_sha256: str
    hook_name: str
    d_sae: int


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    model: str  # the language model it was made on
    sae: ProfileSae
    features: tuple[SteeringFeature, ...]
    created_at: datetime
    updated_at: datetime

    @property
    def steering(self) -> SteeringSet:
        return SteeringSet(self.features, enabled=True)


def validate_name(name: str, *, param: str = "name") -> str:
    if ":" in name:
        raise InvalidArgumentError(
            f"Profile name '{name}' must not contain ':'. Clients choose a profile through "
            "the model id '<model>:<profile>', so ':' separates the two.",
            param=param,
        )
    if not _NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"Profile name '{name}' is not valid: use 1 to {NAME_MAX_CHARS} letters, digits, "
            "'-', '_' or '.'.",
            param=param,
        )
    return name


def validate_description(description: str, *, param: str = "description") -> str:
    if len(description) > DESCRIPTION_MAX_CHARS:
        raise InvalidArgumentError(
            f"The description has {len(description)} characters; at most "
            f"{DESCRIPTION_MAX_CHARS} are allowed.",
            param=param,
        )
    return description
