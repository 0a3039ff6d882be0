"""Export and import: the JSON format, its error messages and the compatibility check."""

from __future__ import annotations

import json

import grpc
import pytest

from inference_service.errors import IncompatibleSaeError, InvalidArgumentError, UnsupportedError
from inference_service.profiles import ProfileExistsError, ProfileManager
from inference_service.profiles import schema as profile_schema
from inference_service.steering.state import SteeringState
from inference_service.steering.types import SteeringFeature, SteeringSet
from tests.unit.profiles.conftest import MODEL, SAE_A, SAE_B, Attachment, narrower

FEATURES = [
    SteeringFeature(7, "add", 8.0, label="ALL CAPS «loud»"),
    SteeringFeature(3, "clamp", -2.5),
    SteeringFeature(1000, "multiply", 0.1, normalize=True),
    SteeringFeature(12, "add", 3),  # an int strength is written as 3.0
]

EXPECTED = """{
  "schema": "millm.profile/v1",
  "name": "yelling",
  "description": "Answers in capitals.",
  "model": "smollm2-135m-instruct",
  "sae": {
    "name": "smol-l9",
    "weights_sha256": "<sha>",
    "hook_name": "blocks.9.hook_resid_post",
    "d_sae": 1024
  },
  "features": [
    {
      "index": 7,
      "mode": "add",
      "strength": 8.0,
      "normalize": false,
      "label": "ALL CAPS «loud»"
    },
    {
      "index": 3,
      "mode": "clamp",
      "strength": -2.5,
      "normalize": false,
      "label": ""
    },
    {
      "index": 1000,
      "mode": "multiply",
      "strength": 0.1,
      "normalize": true,
      "label": ""
    },
    {
      "index": 12,
      "mode": "add",
      "strength": 3.0,
      "normalize": false,
      "label": ""
    }
  ]
}
""".replace("<sha>", SAE_A.weights_sha256)


@pytest.fixture
def exported(manager: ProfileManager) -> str:
    manager.create("yelling", "Answers in capitals.", FEATURES)
    return manager.export_json("yelling")


def _doc(text: str, **changes: object) -> str:
    document = json.loads(text)
    for path, value in changes.items():
        *parents, key = path.split("__")
        target = document
        for parent in parents:
            target = target[int(parent)] if parent.isdigit() else target[parent]
        if value is _DROP:
            del target[key]
        else:
            target[key] = value
    return json.dumps(document)


_DROP = object()


def test_export_is_the_documented_bytes(exported: str) -> None:
    assert exported == EXPECTED


def test_export_import_export_is_byte_identical(
    manager: ProfileManager, exported: str, steering: SteeringState
) -> None:
    manager.delete("yelling")
    imported, mismatches = manager.import_json(exported)
    assert mismatches == ()
    assert imported.sae.sae_id == SAE_A.sae_id  # bound to the attached SAE again
    assert manager.export_json("yelling") == exported

    # Also through a second server that never saw the profile, and with overwrite.
    again, _ = manager.import_json(exported, overwrite=True)
    assert manager.export_json("yelling") == exported
    assert again.features == imported.features


def test_export_has_no_timestamps_ids_or_paths(exported: str) -> None:
    document = json.loads(exported)
    assert list(document) == ["schema", "name", "description", "model", "sae", "features"]
    assert list(document["sae"]) == ["name", "weights_sha256", "hook_name", "d_sae"]
    assert "sae-a" not in exported
    assert "created" not in exported and "/" not in exported.replace("millm.profile/v1", "")


def test_import_of_an_existing_name_is_already_exists(
    manager: ProfileManager, exported: str
) -> None:
    with pytest.raises(ProfileExistsError) as caught:
        manager.import_json(exported)
    assert caught.value.code is grpc.StatusCode.ALREADY_EXISTS
    manager.import_json(_doc(exported, description="replaced"), overwrite=True)
    assert manager.get("yelling").description == "replaced"


def test_overwriting_the_active_profile_steers_with_the_new_one(
    manager: ProfileManager, exported: str, steering: SteeringState
) -> None:
    manager.activate("yelling")
    manager.import_json(_doc(exported, features=[{"index": 5, "strength": 1.5}]), overwrite=True)
    assert steering.effective() == SteeringSet((SteeringFeature(5, "add", 1.5),), True)


# ---- compatibility -----------------------------------------------------------------------


def _mismatch(manager: ProfileManager, text: str) -> str:
    with pytest.raises(IncompatibleSaeError) as caught:
        manager.import_json(text)
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.message.endswith(
        "Attach the profile's SAE, or import with `force` to save it anyway."
    )
    return caught.value.message


def test_each_kind_of_mismatch_is_reported(
    manager: ProfileManager, exported: str, attachment: Attachment
) -> None:
    manager.delete("yelling")
    message = _mismatch(manager, _doc(exported, model="gpt2"))
    assert f"model: the profile was made on 'gpt2', the served model is '{MODEL}'" in message

    other_sha = "c" * 64
    message = _mismatch(manager, _doc(exported, sae__weights_sha256=other_sha))
    assert (
        f"sae.weights_sha256: the profile's SAE 'smol-l9' has {other_sha}, the attached SAE "
        f"'smol-l9' has {SAE_A.weights_sha256}"
    ) in message

    message = _mismatch(manager, _doc(exported, sae__hook_name="blocks.2.hook_resid_pre"))
    assert (
        "sae.hook_name: the profile steers at 'blocks.2.hook_resid_pre', the attached SAE is "
        "at 'blocks.9.hook_resid_post'"
    ) in message

    message = _mismatch(manager, _doc(exported, sae__d_sae=2048))
    assert "sae.d_sae: the profile's SAE has 2048 features, the attached SAE has 1024" in message

    attachment.target = narrower(SAE_A, 900)
    message = _mismatch(manager, exported)
    assert "features[2].index 1000 is out of range for the attached SAE (0 to 899)" in message

    attachment.target = None
    message = _mismatch(manager, exported)
    assert "sae: no SAE is attached; the profile steers 'smol-l9' (weights sha256 " in message
    assert manager.list() == ()


def test_every_mismatch_is_listed_at_once(
    manager: ProfileManager, exported: str, attachment: Attachment
) -> None:
    manager.delete("yelling")
    text = _doc(exported, model="gpt2", sae__name="other")
    # SAE_B differs from the document in checksum, hook, width and one feature index.
    attachment.target = SAE_B
    message = _mismatch(manager, text)
    assert message.startswith("Profile 'yelling' does not match what is loaded: model: ")
    for part in ("model:", "sae.weights_sha256:", "sae.hook_name:", "sae.d_sae:"):
        assert part in message
    assert "features[2].index 1000" in message
    assert message.count("; ") == 4


def test_force_saves_and_returns_the_mismatches(
    manager: ProfileManager, exported: str, attachment: Attachment
) -> None:
    manager.delete("yelling")
    attachment.target = SAE_B
    profile, mismatches = manager.import_json(exported, force=True)
    assert len(mismatches) == 4
    assert mismatches[0].startswith("sae.weights_sha256:")
    assert profile.sae.sae_id == ""  # its SAE is not here
    assert profile.sae.weights_sha256 == SAE_A.weights_sha256
    assert manager.export_json("yelling") == exported  # saved as written
    with pytest.raises(IncompatibleSaeError):
        manager.activate("yelling")
    attachment.target = SAE_A
    assert manager.activate("yelling").name == "yelling"


def test_forced_profile_out_of_range_cannot_be_activated(
    manager: ProfileManager, exported: str, attachment: Attachment
) -> None:
    manager.delete("yelling")
    attachment.target = narrower(SAE_A, 900)
    _, mismatches = manager.import_json(exported, force=True)
    assert mismatches == (
        "sae.d_sae: the profile's SAE has 1024 features, the attached SAE has 900",
        "features[2].index 1000 is out of range for the attached SAE (0 to 899)",
    )
    with pytest.raises(IncompatibleSaeError) as caught:
        manager.activate("yelling")
    assert "Profile 'yelling' cannot steer the attached SAE: features[2].index 1000" in (
        caught.value.message
    )


def test_model_is_checked_without_an_sae_when_the_server_names_it(
    database, steering: SteeringState, attachment: Attachment, exported: str
) -> None:
    attachment.target = None
    named = ProfileManager(database, steering, served_model=lambda: "gpt2")
    _, mismatches = named.import_json(exported, overwrite=True, force=True)
    assert [m.split(":")[0] for m in mismatches] == ["model", "sae"]


# ---- malformed documents -----------------------------------------------------------------


def _invalid(text: str) -> str:
    with pytest.raises(InvalidArgumentError) as caught:
        profile_schema.loads(text)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.param == "json"
    return caught.value.message


def test_json_syntax_errors_say_where() -> None:
    assert _invalid('{"schema": "millm.profile/v1",\n "name": }') == (
        "The profile is not valid JSON: Expecting value at line 2, column 10."
    )
    assert _invalid("") == "The profile is not valid JSON: Expecting value at line 1, column 1."
    assert "NaN is not a JSON number" in _invalid(EXPECTED.replace("8.0", "NaN"))


VIOLATIONS = [
    ("name", _DROP, "`name` is missing."),
    ("sae__d_sae", _DROP, "`sae.d_sae` is missing."),
    ("sae", [], "`sae` must be an object; got an array."),
    ("sae__d_sae", "1024", "`sae.d_sae` must be an integer; got the string '1024'."),
    ("sae__d_sae", 0, "`sae.d_sae` must be at least 1; got 0."),
    (
        "sae__weights_sha256",
        "ABC",
        "`sae.weights_sha256` must be 64 lower-case hex digits; got 'ABC'.",
    ),
    ("model", None, "`model` must be a string; got null."),
    ("features", {}, "`features` must be an array; got an object."),
    ("features__1__index", 2.5, "`features[1].index` must be an integer; got the number 2.5."),
    ("features__1__index", True, "`features[1].index` must be an integer; got a boolean."),
    (
        "features__0__mode",
        "subtract",
        "`features[0].mode` must be one of add, clamp, multiply; got 'subtract'.",
    ),
    ("features__0__strength", "8", "`features[0].strength` must be a number; got the string '8'."),
    (
        "features__0__normalize",
        1,
        "`features[0].normalize` must be true or false; got the number 1.",
    ),
    (
        "features__3__strenght",
        1.0,
        "unknown key `features[3].strenght` (known here: index, mode, strength, normalize, label).",
    ),
    (
        "extra",
        1,
        "unknown key `extra` (known here: schema, name, model, sae, features, description).",
    ),
    ("features__1__index", 7, "features[1].index 7 appears twice; steer each feature once."),
    (
        "features__1__index",
        1024,
        "`features[1].index` is 1024, outside the profile's SAE (`sae.d_sae` 1024: 0 to 1023).",
    ),
    (
        "features__1__index",
        -1,
        "`features[1].index` is -1, outside the profile's SAE (`sae.d_sae` 1024: 0 to 1023).",
    ),
]


@pytest.mark.parametrize(("path", "value", "problem"), VIOLATIONS)
def test_schema_violations_name_the_field(path: str, value: object, problem: str) -> None:
    assert _invalid(_doc(EXPECTED, **{path: value})) == f"Profile JSON: {problem}"


def test_the_document_must_be_an_object() -> None:
    assert _invalid("[1]") == "Profile JSON: the document must be an object; got an array."


def test_bad_names_are_refused_on_import() -> None:
    assert "'<model>:<profile>'" in _invalid(_doc(EXPECTED, name="gpt2:yelling"))


def test_optional_fields_take_their_defaults() -> None:
    document = profile_schema.loads(
        _doc(EXPECTED, description=_DROP, features=[{"index": 4}, {"index": 5, "mode": "clamp"}])
    )
    assert document.description == ""
    assert document.features == (SteeringFeature(4), SteeringFeature(5, "clamp"))


@pytest.mark.parametrize(
    ("schema", "hint"),
    [
        ("millm.profile/v2", "this server reads 'millm.profile/v1' only"),
        ("neuronpedia/v1", 'a miLLM profile says "schema": "millm.profile/v1"'),
    ],
)
def test_unknown_schema_is_unsupported(schema: str, hint: str) -> None:
    with pytest.raises(UnsupportedError) as caught:
        profile_schema.loads(_doc(EXPECTED, schema=schema))
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "UNSUPPORTED"
    assert caught.value.message == f"Unknown profile schema '{schema}': {hint}."
