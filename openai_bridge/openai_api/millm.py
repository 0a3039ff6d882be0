"""The `millm` request field and the `<model>:<profile>` model id.

The official SDK sends the field with `extra_body={"millm": {...}}`; it arrives
as a top-level key of the body:

    {"profile": "yelling"}
    {"steering": [{"index": 123, "mode": "add", "strength": 40.0}], "steering_enabled": true}
    {"steering": "off"}
    {"activations": {"features": [123], "top_k": 5}}   (chat and completions)
    {"compare": true}                                  (chat and completions, not streamed)

Which steering a request gets, first match wins:

1. `millm.steering`: these features for this request only, or "off" for none at all;
2. `millm.profile`: that saved profile;
3. a profile in the model id, `<served model>:<profile>`, for clients that can only
   choose a model;
4. the global steering: the active profile, else the live features.

`millm.steering` and `millm.profile` together are refused (400). A `millm` field
beats a profile in the model id; the model id then only names the model.

Shapes are checked here (400, `param` like `millm.steering[0].strength`); index
ranges, finiteness and whether a profile exists are the inference service's to
judge, and its errors are renamed to the fields the client sent.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from millm.v1 import inference_service_pb2 as pb
from millm.v1 import steering_pb2 as stpb
from openai_bridge import steering_json
from openai_bridge.errors import InferenceError, invalid_request, unsupported
from openai_bridge.inference_client import InferenceClient

FIELD = "millm"
PROFILE_NAME_MAX = 64
# Seeds the bridge picks for a comparison; small enough for any sampler backend.
SEED_RANGE = 2**31

# Where a request's steering came from, named as the client named it.
Source = Literal["millm.steering", "millm.profile", "model"]


class MillmField(BaseModel):
    """The `millm` object. Unlike the OpenAI fields around it, unknown keys are refused:
    a misspelt `steerng` must not silently leave a request unsteered."""

    model_config = ConfigDict(extra="forbid")

    profile: str | None = Field(default=None, min_length=1, max_length=PROFILE_NAME_MAX)
    steering: list[steering_json.FeatureBody] | Literal["off"] | None = None
    steering_enabled: bool | None = None
    activations: steering_json.ActivationsBody | None = None
    compare: bool = False

    @field_validator("steering", mode="before")
    @classmethod
    def _features_or_off(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "off":
            raise ValueError('`steering` is a list of features or the string "off"')
        return value


@dataclass(frozen=True)
class Extension:
    """A request's `millm` field, checked and translated."""

    steering: stpb.RequestSteering | None = None
    source: Source | None = None
    activations: stpb.ActivationRequest | None = None
    compare: bool = False


NO_EXTENSION = Extension()


@dataclass(frozen=True)
class ModelChoice:
    """The `model` field split into the model to ask for and a profile it names."""

    model: str
    profile: str | None = None

    def response_model(self, served: str) -> str:
        """The `model` a response reports: the alias the client asked for, if it used one."""
        return f"{served}:{self.profile}" if self.profile else served


# ---------------------------------------------------------------- the field


def _param(loc: Sequence[Any]) -> str:
    """('steering', 'list[FeatureBody]', 0, 'strength') -> 'millm.steering[0].strength'."""
    param = FIELD
    for part in loc:
        if isinstance(part, int):
            param += f"[{part}]"
        elif "[" not in part:  # pydantic names the union member it tried: skip it
            param += f".{part}"
    return param


def _shape_error(exc: ValidationError) -> InferenceError:
    first = exc.errors()[0]
    param = _param(first.get("loc", ()))
    message = str(first.get("msg", "Invalid value")).removeprefix("Value error, ")
    return invalid_request(f"{message} (at `{param}`)", param)


def _steering(field: MillmField) -> tuple[stpb.RequestSteering | None, Source | None]:
    if field.profile is not None and field.steering is not None:
        raise invalid_request(
            "Give `millm.profile` or `millm.steering`, not both.", "millm.steering"
        )
    if field.steering_enabled is not None and not isinstance(field.steering, list):
        raise invalid_request(
            "`millm.steering_enabled` goes with a `millm.steering` list of features.",
            "millm.steering_enabled",
        )
    if field.steering == "off":
        return stpb.RequestSteering(disabled=True), "millm.steering"
    if field.steering is not None:
        enabled = field.steering_enabled if field.steering_enabled is not None else True
        features = stpb.SteeringSet(
            features=steering_json.feature_messages(field.steering), enabled=enabled
        )
        return stpb.RequestSteering(features=features), "millm.steering"
    if field.profile is not None:
        return stpb.RequestSteering(profile=field.profile), "millm.profile"
    return None, None


def _activations(body: steering_json.ActivationsBody) -> stpb.ActivationRequest:
    if not body.features and not body.top_k:
        raise invalid_request(
            "`millm.activations` needs `features`, a `top_k` above 0, or both.",
            "millm.activations",
        )
    return stpb.ActivationRequest(features=body.features, top_k=body.top_k)


def _parse(raw: dict[str, Any]) -> MillmField:
    try:
        return MillmField.model_validate(raw)
    except ValidationError as exc:
        raise _shape_error(exc) from None


def for_generation(raw: dict[str, Any] | None, *, stream: bool) -> Extension:
    """The field of a chat or legacy completion request."""
    if raw is None:
        return NO_EXTENSION
    field = _parse(raw)
    steering, source = _steering(field)
    if field.compare and stream:
        raise unsupported(
            "`millm.compare` returns both completions in one response, so it needs "
            "`stream` to be false.",
            "millm.compare",
        )
    activations = _activations(field.activations) if field.activations is not None else None
    return Extension(steering, source, activations, field.compare)


def for_embeddings(raw: dict[str, Any] | None) -> Extension:
    """The field of an embeddings request: steering only."""
    if raw is None:
        return NO_EXTENSION
    field = _parse(raw)
    for name, given in (("activations", field.activations is not None), ("compare", field.compare)):
        if given:
            raise unsupported(f"`millm.{name}` is not supported by embeddings.", f"millm.{name}")
    steering, source = _steering(field)
    return Extension(steering, source)


# ---------------------------------------------------------------- the model id


def split_model_id(requested: str, served: str | None) -> ModelChoice:
    """`<served>:<profile>` -> (served, profile). Anything else stays as it is, so a
    model id that itself has a ":" (`org/model:q4`) still names the model."""
    if served and requested.startswith(f"{served}:") and len(requested) > len(served) + 1:
        return ModelChoice(served, requested[len(served) + 1 :])
    return ModelChoice(requested)


async def choose_model(client: InferenceClient, requested: str) -> ModelChoice:
    """Splits off a profile against the served model's id (asked only when the id has a
    ":"; GetServerInfo never queues)."""
    if ":" not in requested:
        return ModelChoice(requested)
    info = await client.server_info()
    ready = info.model_state == pb.MODEL_STATE_READY and info.HasField("model")
    return split_model_id(requested, info.model.id if ready else None)


def steering_for(
    extension: Extension, choice: ModelChoice
) -> tuple[stpb.RequestSteering | None, Source | None]:
    """The request's steering by the precedence above; None follows the global steering."""
    if extension.steering is not None:
        return extension.steering, extension.source
    if choice.profile:
        return stpb.RequestSteering(profile=choice.profile), "model"
    return None, None


@dataclass(frozen=True)
class Prepared:
    """What `prepare` decided: where the steering came from (to name service errors
    after the client's fields), whether activations were asked for, and whether to
    run the unsteered comparison."""

    source: Source | None
    activations: bool
    compare: bool = False


def prepare(start: pb.GenerateStart, extension: Extension, choice: ModelChoice) -> Prepared:
    """Completes `start` with the model, steering and activations. A comparison needs
    both runs to draw the same random numbers, so it fixes a seed if none was given."""
    start.model = choice.model
    steering, source = steering_for(extension, choice)
    if steering is not None:
        start.steering.CopyFrom(steering)
    if extension.activations is not None:
        start.activations.CopyFrom(extension.activations)
    if extension.compare and not start.sampling.HasField("seed"):
        start.sampling.seed = random.randrange(SEED_RANGE)
    return Prepared(source, extension.activations is not None, extension.compare)


def prepare_embed(request: pb.EmbedRequest, extension: Extension, choice: ModelChoice) -> Prepared:
    request.model = choice.model
    steering, source = steering_for(extension, choice)
    if steering is not None:
        request.steering.CopyFrom(steering)
    return Prepared(source, activations=False)


def unsteered(start: pb.GenerateStart) -> pb.GenerateStart:
    """The comparison run: the same request and sampling, with no steering at all."""
    default = pb.GenerateStart()
    default.CopyFrom(start)
    default.steering.CopyFrom(stpb.RequestSteering(disabled=True))
    default.ClearField("activations")
    return default


# ---------------------------------------------------------------- service errors


_ACTIVATION_PARAMS = ("features", "top_k")


def _client_param(error: InferenceError, prepared: Prepared) -> str | None:
    param = error.param
    if error.reason == "PROFILE_NOT_FOUND" and prepared.source in ("millm.profile", "model"):
        return prepared.source
    if param is None:
        return None
    if prepared.source == "millm.steering" and param.startswith("steering.features"):
        return "millm.steering" + param.removeprefix("steering.features")
    if prepared.activations:
        name = param.removeprefix("activations.")
        if name.split("[")[0] in _ACTIVATION_PARAMS:
            return f"millm.activations.{name}"
    return param


@contextmanager
def client_names(prepared: Prepared) -> Iterator[None]:
    """Renames a service error's `param` (and its mention in the message) to the field the
    client sent: the service names fields of its own request (`steering.features[0].strength`),
    the client wrote `millm.steering[0].strength`, or chose the profile through `model`."""
    try:
        yield
    except InferenceError as error:
        param = _client_param(error, prepared)
        # Only a dotted path is safe to replace; a bare `features` is also an English word.
        if error.param and param and param != error.param and "." in error.param:
            error.message = error.message.replace(error.param, param)
        error.param = param
        raise


# ---------------------------------------------------------------- responses


def response_field(
    activations: Sequence[stpb.TokenActivations] | None, default: dict[str, Any] | None
) -> dict[str, Any]:
    """The `millm` object of a non-streamed response."""
    field: dict[str, Any] = {}
    if activations is not None:
        field["activations"] = steering_json.activations(activations)
    if default is not None:
        field["default"] = {"choices": default["choices"], "usage": default["usage"]}
    return field


def chunk_field(activations: Sequence[stpb.TokenActivations]) -> dict[str, Any]:
    """The `millm` object of a streamed chunk: the activations of its delta's tokens."""
    return {"activations": steering_json.activations(activations)}
