"""Steering features and feature activations as JSON, for /api/v1 and the OpenAI `millm` field.

The request models are shared by both; the messages go through `proto_json`.

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
from openai_bridge import proto_json

UINT32_MAX = 2**32 - 1
LABEL_MAX = 200

SteeringModeName = Literal["add", "clamp", "multiply"]
FeatureIndex = Annotated[int, Field(ge=0, le=UINT32_MAX)]


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


def feature_messages(bodies: Iterable[FeatureBody]) -> list[stpb.SteeringFeature]:
    return [
        proto_json.message(stpb.SteeringFeature, b.model_dump(exclude_none=True)) for b in bodies
    ]


def activations(messages: Iterable[stpb.TokenActivations]) -> list[dict[str, Any]]:
    return [proto_json.to_json(m) for m in messages]
