"""The `millm` field and the `<model>:<profile>` model id, as pure translation."""

from __future__ import annotations

import grpc
import pytest

from millm.v1 import inference_service_pb2 as pb
from millm.v1 import steering_pb2 as stpb
from openai_bridge.errors import InferenceError
from openai_bridge.openai_api import millm

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
    extension = millm.for_generation(field, stream=False)
    choice = millm.ModelChoice("m", model_profile)
    assert millm.steering_for(extension, choice) == (expected, source)


def test_prepare_fills_the_start_and_fixes_a_seed_only_for_compare():
    start = pb.GenerateStart(model="m:calm")
    extension = millm.for_generation({"compare": True, "activations": {"top_k": 3}}, stream=False)
    prepared = millm.prepare(start, extension, millm.ModelChoice("m", "calm"))
    assert prepared == millm.Prepared(source="model", activations=True, compare=True)
    assert (start.model, start.steering, start.activations) == (
        "m",
        PROFILE,
        stpb.ActivationRequest(top_k=3),
    )
    assert 0 <= start.sampling.seed < millm.SEED_RANGE and start.sampling.HasField("seed")

    plain = pb.GenerateStart()
    millm.prepare(plain, millm.for_generation({}, stream=False), millm.ModelChoice("m"))
    assert not plain.sampling.HasField("seed") and not plain.HasField("steering")


def test_unsteered_twin_keeps_everything_but_steering_and_activations():
    start = pb.GenerateStart(
        model="m",
        prompt="Hi",
        sampling=pb.SamplingParams(seed=4, max_tokens=3),
        steering=PROFILE,
        activations=stpb.ActivationRequest(top_k=2),
    )
    twin = millm.unsteered(start)
    assert twin == pb.GenerateStart(
        model="m",
        prompt="Hi",
        sampling=pb.SamplingParams(seed=4, max_tokens=3),
        steering=stpb.RequestSteering(disabled=True),
    )
    assert start.steering == PROFILE  # the original is untouched


def _raised(prepared: millm.Prepared, error: InferenceError) -> InferenceError:
    with pytest.raises(InferenceError) as caught, millm.client_names(prepared):
        raise error
    return caught.value


def test_service_params_are_renamed_to_the_client_fields():
    steering = millm.Prepared(source="millm.steering", activations=True)
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
        millm.Prepared(source="model", activations=False),
        InferenceError(
            grpc.StatusCode.NOT_FOUND, "PROFILE_NOT_FOUND", "No profile 'x'.", param="name"
        ),
    )
    assert (by_model.param, by_model.message) == ("model", "No profile 'x'.")
    untouched = _raised(
        millm.Prepared(source=None, activations=False),
        InferenceError(grpc.StatusCode.INVALID_ARGUMENT, None, "Bad.", param="temperature"),
    )
    assert untouched.param == "temperature"


def test_embeddings_refuse_generation_only_keys():
    with pytest.raises(InferenceError) as caught:
        millm.for_embeddings({"compare": True})
    assert caught.value.param == "millm.compare"
    # `false` asks for nothing, so it is no reason to refuse.
    assert millm.for_embeddings({"compare": False, "profile": "calm"}).steering == PROFILE
