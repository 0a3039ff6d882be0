"""What `SaeManager` publishes when the attached SAE changes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SaeAttached:
    sae_id: str
    sae_name: str
    hook_name: str
    model_id: str


@dataclass(frozen=True)
class SaeDetached:
    sae_id: str
    hook_name: str
    model_id: str
    with_model: bool  # it went because the model was unloaded or replaced
