"""Steering features and feature activations as JSON, for /api/v1 and the OpenAI `millm` field.

A feature is `{"index", "mode", "strength", "normalize", "label"}` with `mode`
"add", "clamp" or "multiply"; the activations of one token are `{"position",
"token_id", "token", "features": [{"index", "value"}], "top": [...]}`. Shapes
are checked here; index ranges, finiteness and duplicates are the inference
service's to judge, against the attached SAE.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from millm.v1 import steering_pb2 as stpb

UINT32_MAX = 2**32 - 1
LABEL_MAX = 200

SteeringModeName = Literal["add", "clamp", "multiply"]
FeatureIndex = Annotated[int, Field(ge=0, le=UINT32_MAX)]

_MODES: dict[SteeringModeName, int] = {
    "add": stpb.STEERING_MODE_ADD,
    "clamp": stpb.STEERING_MODE_CLAMP,
    "multiply": stpb.STEERING_MODE_MULTIPLY,
}
# UNSPECIFIED is treated as ADD by the service, so it reads as "add" here too.
_MODE_NAMES: dict[int, SteeringModeName] = {
    stpb.STEERING_MODE_UNSPECIFIED: "add",
    **{value: name for name, value in _MODES.items()},
}


class FeatureBody(BaseModel):
    """One steered feature in a request body."""

    model_config = ConfigDict(extra="forbid")

    index: FeatureIndex
    mode: SteeringModeName = "add"
    # Added decoder-row units (add), target activation (clamp) or factor (multiply).
    strength: float
    # Divide the decoder row by its norm first (add only).
    normalize: bool = False
    label: str | None = Field(default=None, max_length=LABEL_MAX)


class ActivationsBody(BaseModel):
    """Which activations to report per token: these features and/or the top k."""

    model_config = ConfigDict(extra="forbid")

    features: list[FeatureIndex] = Field(default_factory=list)
    top_k: int = Field(default=0, ge=0, le=UINT32_MAX)


def feature_message(body: FeatureBody) -> stpb.SteeringFeature:
    return stpb.SteeringFeature(
        index=body.index,
        mode=_MODES[body.mode],
        strength=body.strength,
        normalize=body.normalize,
        label=body.label or "",
    )


def feature_messages(bodies: Iterable[FeatureBody]) -> list[stpb.SteeringFeature]:
    return [feature_message(b) for b in bodies]


def feature(message: stpb.SteeringFeature) -> dict[str, Any]:
    return {
        "index": message.index,
        "mode": _MODE_NAMES.get(message.mode, "add"),
        "strength": message.strength,
        "normalize": message.normalize,
        "label": message.label or None,
    }


def steering_set(message: stpb.SteeringSet) -> dict[str, Any]:
    return {"features": [feature(f) for f in message.features], "enabled": message.enabled}


def _values(values: Iterable[stpb.FeatureActivation]) -> list[dict[str, Any]]:
    return [{"index": v.index, "value": v.value} for v in values]


def token_activations(message: stpb.TokenActivations) -> dict[str, Any]:
    return {
        "position": message.position,
        "token_id": message.token_id,
        "token": message.token,
        "features": _values(message.features),
        "top": _values(message.top),
    }


def activations(messages: Iterable[stpb.TokenActivations]) -> list[dict[str, Any]]:
    return [token_activations(m) for m in messages]
