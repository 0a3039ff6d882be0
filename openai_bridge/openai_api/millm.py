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

Shapes are checked with the rest of the body (`protocol.MillmExtension`: 400,
`param` like `millm.steering[0].strength`), which keys go together here; index
ranges, finiteness and whether a profile exists are the inference service's to
judge, and its errors are renamed to the fields the client sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from millm.v1 import inference_service_pb2 as pb
from millm.v1 import steering_pb2 as stpb
from openai_bridge import steering_json
from openai_bridge.errors import InferenceError, invalid_request, unsupported
from openai_bridge.inference_client import InferenceClient
from openai_bridge.openai_api.protocol import MillmExtension
from openai_bridge.services import MISS_REFRESH_S, Services, Surveyed, not_served

NO_FIELD = MillmExtension()

# Where a request's steering came from, named as the client named it.
Source = Literal["millm.steering", "millm.profile", "model"]


@dataclass(frozen=True)
class ModelChoice:
    """The `model` field split into the model to ask for and a profile it names."""

    model: str
    profile: str | None = None

    def response_model(self, served: str) -> str:
        """The `model` a response reports: the alias the client asked for, if it used one."""
        return f"{served}:{self.profile}" if self.profile else served


@dataclass(frozen=True)
class Extension:
    """A request's `millm` field and model id, translated: the steering to send (None
    follows the global steering) and the field that chose it (to name service errors
    after), the activations to report, and whether to run the unsteered comparison."""

    steering: stpb.RequestSteering | None = None
    source: Source | None = None
    activations: stpb.ActivationRequest | None = None
    compare: bool = False


# ---------------------------------------------------------------- the field


def _steering(
    field: MillmExtension, choice: ModelChoice
) -> tuple[stpb.RequestSteering | None, Source | None]:
    """The request's steering by the precedence above."""
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
    if choice.profile:
        return stpb.RequestSteering(profile=choice.profile), "model"
    return None, None


def _activations(body: steering_json.ActivationsBody) -> stpb.ActivationRequest:
    if not body.features and not body.top_k:
        raise invalid_request(
            "`millm.activations` needs `features`, a `top_k` above 0, or both.",
            "millm.activations",
        )
    return stpb.ActivationRequest(features=body.features, top_k=body.top_k)


def for_generation(field: MillmExtension | None, choice: ModelChoice, *, stream: bool) -> Extension:
    """The extension of a chat or legacy completion request."""
    field = field or NO_FIELD
    steering, source = _steering(field, choice)
    if field.compare and stream:
        raise unsupported(
            "`millm.compare` returns both completions in one response, so it needs "
            "`stream` to be false.",
            "millm.compare",
        )
    activations = _activations(field.activations) if field.activations is not None else None
    return Extension(steering, source, activations, field.compare)


def for_embeddings(field: MillmExtension | None, choice: ModelChoice) -> Extension:
    """The extension of an embeddings request: steering only."""
    field = field or NO_FIELD
    for name, given in (("activations", field.activations is not None), ("compare", field.compare)):
        if given:
            raise unsupported(f"`millm.{name}` is not supported by embeddings.", f"millm.{name}")
    return Extension(*_steering(field, choice))


# ---------------------------------------------------------------- the model id


def split_model_id(requested: str, served: str | None) -> ModelChoice:
    """`<served>:<profile>` -> (served, profile). Anything else stays as it is, so a
    model id that itself has a ":" (`org/model:q4`) still names the model."""
    if served and requested.startswith(f"{served}:") and len(requested) > len(served) + 1:
        return ModelChoice(served, requested[len(served) + 1 :])
    return ModelChoice(requested)


async def choose_model(services: Services, requested: str) -> tuple[InferenceClient, ModelChoice]:
    """The service that serves `requested`, and the id split into model and profile.

    One service judges the id itself; the profile is split off against its model's
    id (asked only when the id has a ":"; GetServerInfo never queues). Among several
    the id picks the service (an exact id first, then `<id>:<profile>`), and an empty
    id the default one; an id none of them serves is `services.not_served`."""
    if not services.several:
        client = services.default
        if ":" not in requested:
            return client, ModelChoice(requested)
        info = await client.server_info()
        ready = info.model_state == pb.MODEL_STATE_READY and info.HasField("model")
        return client, split_model_id(requested, info.model.id if ready else None)
    if not requested:
        return services.default, ModelChoice(requested)
    for max_age_s in (services.refresh_s, MISS_REFRESH_S):
        surveyed = await services.survey(max_age_s=max_age_s)
        if (found := _serving(surveyed, requested)) is not None:
            return found
    raise not_served(requested, surveyed)


def _serving(
    surveyed: Sequence[Surveyed], requested: str
) -> tuple[InferenceClient, ModelChoice] | None:
    served = [(s.client, s.model.id) for s in surveyed if s.model is not None]
    for client, model in served:
        if model == requested:
            return client, ModelChoice(model)
    # The longest id first: `org/m:q4:p` is profile `p` of `org/m:q4`, not of `org/m`.
    for client, model in sorted(served, key=lambda pair: -len(pair[1])):
        choice = split_model_id(requested, model)
        if choice.profile:
            return client, choice
    return None


# ---------------------------------------------------------------- service errors


_ACTIVATION_PARAMS = ("features", "top_k")


def _client_param(error: InferenceError, extension: Extension) -> str | None:
    param = error.param
    if error.reason == "PROFILE_NOT_FOUND" and extension.source in ("millm.profile", "model"):
        return extension.source
    if param is None:
        return None
    if extension.source == "millm.steering" and param.startswith("steering.features"):
        return "millm.steering" + param.removeprefix("steering.features")
    if extension.activations is not None:
        name = param.removeprefix("activations.")
        if name.split("[")[0] in _ACTIVATION_PARAMS:
            return f"millm.activations.{name}"
    return param


@contextmanager
def client_names(extension: Extension) -> Iterator[None]:
    """Renames a service error's `param` (and its mention in the message) to the field the
    client sent: the service names fields of its own request (`steering.features[0].strength`),
    the client wrote `millm.steering[0].strength`, or chose the profile through `model`."""
    try:
        yield
    except InferenceError as error:
        param = _client_param(error, extension)
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
