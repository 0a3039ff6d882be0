"""Translation between steering/monitoring domain values and millm.v1 messages."""

from __future__ import annotations

from collections.abc import Iterable

from inference_service.monitoring.types import (
    ActivationFrame,
    FeatureValue,
    Selection,
    TokenActivations,
)
from inference_service.steering.types import (
    FOLLOW_GLOBAL,
    SteeringChoice,
    SteeringFeature,
    SteeringMode,
    SteeringSet,
)
from millm.v1 import monitoring_service_pb2 as monitoring_pb2
from millm.v1 import steering_pb2 as pb

_MODES: dict[int, SteeringMode] = {
    pb.STEERING_MODE_UNSPECIFIED: "add",
    pb.STEERING_MODE_ADD: "add",
    pb.STEERING_MODE_CLAMP: "clamp",
    pb.STEERING_MODE_MULTIPLY: "multiply",
}
_MODE_VALUES = {"add": pb.STEERING_MODE_ADD, "clamp": pb.STEERING_MODE_CLAMP}
_MODE_VALUES["multiply"] = pb.STEERING_MODE_MULTIPLY


def feature(message: pb.SteeringFeature) -> SteeringFeature:
    return SteeringFeature(
        index=message.index,
        mode=_MODES.get(message.mode, "add"),
        strength=message.strength,
        normalize=message.normalize,
        label=message.label,
    )


def features(messages: Iterable[pb.SteeringFeature]) -> tuple[SteeringFeature, ...]:
    return tuple(feature(m) for m in messages)


def steering_set(message: pb.SteeringSet) -> SteeringSet:
    return SteeringSet(features(message.features), message.enabled)


def feature_message(value: SteeringFeature) -> pb.SteeringFeature:
    return pb.SteeringFeature(
        index=value.index,
        mode=_MODE_VALUES[value.mode],
        strength=value.strength,
        normalize=value.normalize,
        label=value.label,
    )


def steering_set_message(value: SteeringSet) -> pb.SteeringSet:
    return pb.SteeringSet(
        features=[feature_message(f) for f in value.features], enabled=value.enabled
    )


def choice(message: pb.RequestSteering) -> SteeringChoice:
    """A request's steering; an unset message follows the global steering."""
    which = message.WhichOneof("source")
    if which == "profile":
        return SteeringChoice("profile", profile=message.profile)
    if which == "features":
        return SteeringChoice("features", steering=steering_set(message.features))
    if which == "disabled" and message.disabled:
        return SteeringChoice("disabled")
    return FOLLOW_GLOBAL


def selection(message: pb.ActivationRequest) -> Selection:
    return Selection(tuple(dict.fromkeys(message.features)), message.top_k)


def _values(values: Iterable[FeatureValue]) -> list[pb.FeatureActivation]:
    return [pb.FeatureActivation(index=v.index, value=v.value) for v in values]


def token_activations(value: TokenActivations) -> pb.TokenActivations:
    return pb.TokenActivations(
        position=value.position,
        token_id=value.token_id,
        token=value.token,
        features=_values(value.features),
        top=_values(value.top),
        unedited_features=_values(value.unedited_features),
    )


def frame(value: ActivationFrame) -> monitoring_pb2.ActivationFrame:
    return monitoring_pb2.ActivationFrame(
        request_id=value.request_id,
        source=value.source,
        hook_name=value.hook_name,
        tokens=[token_activations(t) for t in value.tokens],
        captured_at_unix_ms=value.captured_at_unix_ms,
    )
