"""Steering profiles: named, saved steering sets bound to one model and SAE."""

from inference_service.profiles.manager import (
    ImportResult,
    ProfileChange,
    ProfileChanged,
    ProfileManager,
)
from inference_service.profiles.schema import SCHEMA
from inference_service.profiles.types import Profile, ProfileExistsError, ProfileSae

__all__ = [
    "SCHEMA",
    "ImportResult",
    "Profile",
    "ProfileChange",
    "ProfileChanged",
    "ProfileExistsError",
    "ProfileManager",
    "ProfileSae",
]
