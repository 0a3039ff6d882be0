"""The `millm` field and the `<model>:<profile>` model id: translation, the generation
plan built from them, and the 400s that name the field."""

from __future__ import annotations

import grpc
import pytest

from millm.v1 import inference_service_pb2 as pb
from millm.v1 import steering_pb2 as stpb
from openai_bridge.errors import InferenceError
from openai_bridge.openai_api import build, millm
from openai_bridge.openai_api.protocol import ChatCompletionRequest, MillmExtension

PROFILE = stpb.RequestSteering(profile="calm")


@pytest.mark.parametrize(
    ("requested", "served", "expected"),
    [
        ("m:yelling", "m", millm.ModelChoice("m", "yelling")),
        ("m", "m", millm.ModelChoice("m")),
        # A served id with a ":" of its own is the model, not a profile.
        ("org/model:q4", "org/model:q4", millm.ModelChoice("org/model:q4")),
        ("org/model:q4:calm", "org/model:q4", millm.ModelChoice("org/model:q4", "calm")),
        ("m:", "m", millm.ModelChoice("m:")),
        ("other:calm", "m", millm.ModelChoice("other:calm")),
        ("m:calm", None, millm.ModelChoice("m:calm")),
    ],
)
def test_split_model_id(requested, served, expected):
    assert millm.split_model_id(requested, served) == expected


def test_response_model_echoes_the_alias():
    assert millm.ModelChoice("m", "calm").response_model("m") == "m:calm"
    assert millm.ModelChoice("m").response_model("m") == "m"


@pytest.mark.parametrize(
    ("field", "model_profile", "expected", "source"),
    [
        (None, None, None, None),
        (None, "yelling", stpb.RequestSteering(profile="yelling"), "model"),
        ({"profile": "calm"}, "yelling", PROFILE, "millm.profile"),
        ({"steering": "off"}, "yelling", stpb.RequestSteering(disabled=True), "millm.steering"),
        (
            {"steering": []},
            None,
            stpb.RequestSteering(features=stpb.SteeringSet(enabled=True)),
            "millm.steering",
        ),
        # Only the activations: the steering is still chosen by the model id.
        (
            {"activations": {"top_k": 1}},
            "yelling",
            stpb.RequestSteering(profile="yelling"),
            "model",
        ),
    ],
)
def test_precedence(field, model_profile, expected, source):
    given = MillmExtension.model_validate(field) if field is not None else None
    extension = millm.for_generation(given, millm.ModelChoice("m", model_profile), stream=False)
    assert (extension.steering, extension.source) == (expected, source)


def chat_body(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"}], **fields)


def test_the_plan_is_built_whole_with_a_fixed_seed_and_twin_only_for_compare():
    body = chat_body(model="m:calm", millm={"compare": True, "activations": {"top_k": 3}})
    plan, _ = build.chat(body, millm.ModelChoice("m", "calm"))
    (start,) = plan.starts
    assert plan.activations and plan.extension.source == "model"
    assert (start.model, start.steering, start.activations) == (
        "m",
        PROFILE,
        stpb.ActivationRequest(top_k=3),
    )
    assert 0 <= start.sampling.seed < build.SEED_RANGE and start.sampling.HasField("seed")
    # The comparison: the same request and sampling, with no steering and no activations.
    assert plan.unsteered == pb.GenerateStart(
        model="m",
        chat=start.chat,
        sampling=start.sampling,
        steering=stpb.RequestSteering(disabled=True),
    )

    plain, _ = build.chat(chat_body(n=2, seed=4), millm.ModelChoice("m"))
    assert plain.unsteered is None and not plain.activations
    assert [s.sampling.seed for s in plain.starts] == [4, 5]
    assert not any(s.HasField("steering") for s in plain.starts)


@pytest.mark.parametrize(
    ("field", "param", "message"),
    [
        (
            {"steering": [{"index": 1, "strength": "lots"}]},
            "millm.steering[0].strength",
            "Input should be a valid number, unable to parse string as a number "
            "(at `millm.steering[0].strength`)",
        ),
        (
            {"steering": "on"},
            "millm.steering",
            '`steering` is a list of features or the string "off" (at `millm.steering`)',
        ),
        (
            {"activations": {"features": [1, "x"]}},
            "millm.activations.features[1]",
            "Input should be a valid integer, unable to parse string as an integer "
            "(at `millm.activations.features[1]`)",
        ),
    ],
)
def test_a_bad_shape_is_a_400_naming_its_path(http, fake, field, param, message):
    body = {"messages": [{"role": "user", "content": "Hi"}], "millm": field}
    for path in ("/v1/chat/completions", "/v1/completions"):
        sent = body if path.endswith("chat/completions") else {"prompt": "Hi", "millm": field}
        error = http.post(path, json=sent).json()["error"]
        assert (error["param"], error["message"]) == (param, message)
    assert fake.starts == []


def _raised(extension: millm.Extension, error: InferenceError) -> InferenceError:
    with pytest.raises(InferenceError) as caught, millm.client_names(extension):
        raise error
    return caught.value


def test_service_params_are_renamed_to_the_client_fields():
    steering = millm.Extension(source="millm.steering", activations=stpb.ActivationRequest(top_k=1))
    renamed = _raised(
        steering,
        InferenceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            "steering.features[2].strength must be a finite number.",
            param="steering.features[2].strength",
        ),
    )
    assert (renamed.param, renamed.message) == (
        "millm.steering[2].strength",
        "millm.steering[2].strength must be a finite number.",
    )
    # A bare name is renamed but never replaced inside the English message.
    top_k = _raised(
        steering,
        InferenceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            "At most 64 features; top_k too.",
            param="features",
        ),
    )
    assert (top_k.param, top_k.message) == (
        "millm.activations.features",
        "At most 64 features; top_k too.",
    )
    by_model = _raised(
        millm.Extension(source="model"),
        InferenceError(
            grpc.StatusCode.NOT_FOUND, "PROFILE_NOT_FOUND", "No profile 'x'.", param="name"
        ),
    )
    assert (by_model.param, by_model.message) == ("model", "No profile 'x'.")
    untouched = _raised(
        millm.Extension(),
        InferenceError(grpc.StatusCode.INVALID_ARGUMENT, None, "Bad.", param="temperature"),
    )
    assert untouched.param == "temperature"


def test_embeddings_refuse_generation_only_keys():
    model = millm.ModelChoice("m")
    with pytest.raises(InferenceError) as caught:
        millm.for_embeddings(MillmExtension(compare=True), model)
    assert caught.value.param == "millm.compare"
    # `false` asks for nothing, so it is no reason to refuse.
    asked = MillmExtension(compare=False, profile="calm")
    assert millm.for_embeddings(asked, model).steering == PROFILE
