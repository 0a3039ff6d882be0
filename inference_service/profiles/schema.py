"""The profile exchange format, schema "millm.profile/v1".

An exported profile is one JSON object, written with two-space indentation, the keys
in exactly this order, and a final newline, so that export -> import -> export gives
the same bytes::

    {
      "schema": "millm.profile/v1",
      "name": "yelling",
      "description": "Answers in capitals.",
      "model": "smollm2-135m-instruct",
      "sae": {
        "name": "smol-l9",
        "weights_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "hook_name": "blocks.9.hook_resid_post",
        "d_sae": 16384
      },
      "features": [
        {"index": 1234, "mode": "add", "strength": 8.0, "normalize": false, "label": "caps"}
      ]
    }

(features are written one key per line like the rest; shortened here.)

- `schema` (required): "millm.profile/v1". Another "millm.profile/..." version is
  refused as unsupported; a later version that adds fields gets a new name.
- `name` (required): 1 to 64 letters, digits, '-', '_' or '.'; no ':' (the OpenAI
  model id "<model>:<profile>" uses it as the separator).
- `description` (optional, default ""): text for people.
- `model` (required): the language model the profile was made on.
- `sae` (required): the SAE it steers. `weights_sha256` (SHA-256 of its weights
  file, 64 hex digits) is its identity; `name` is for display; `hook_name` is the
  SAELens hook site; `d_sae` its number of features.
- `features` (required, may be empty): at most one entry per `index` (0 to
  d_sae - 1); `mode` one of "add", "clamp", "multiply" (default "add"); `strength`
  a finite number in raw decoder-row units (default 0); `normalize` a boolean
  (default false, add only); `label` text (default "").

Unknown keys are refused, so a misspelt key is reported rather than ignored. The
format carries no timestamps, cache ids or server paths.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from inference_service.errors import InvalidArgumentError, UnsupportedError
from inference_service.profiles.types import Profile, validate_description, validate_name
from inference_service.steering.types import MODES, SteeringFeature, validate_features

SCHEMA = "millm.profile/v1"
_SCHEMA_FAMILY = "millm.profile/"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PARAM = "json"


@dataclass(frozen=True)
class SaeIdentity:
    """The `sae` object of a document."""

    name: str
    weights_sha256: str
    hook_name: str
    d_sae: int


@dataclass(frozen=True)
class ProfileDocument:
    """A parsed, schema-valid document, not yet checked against what is loaded."""

    name: str
    description: str
    model: str
    sae: SaeIdentity
    features: tuple[SteeringFeature, ...]


# ---- writing ---------------------------------------------------------------------------


def feature_to_dict(feature: SteeringFeature) -> dict[str, Any]:
    return {
        "index": feature.index,
        "mode": feature.mode,
        "strength": float(feature.strength),
        "normalize": feature.normalize,
        "label": feature.label,
    }


def dumps(profile: Profile) -> str:
    document = {
        "schema": SCHEMA,
        "name": profile.name,
        "description": profile.description,
        "model": profile.model,
        "sae": {
            "name": profile.sae.name,
            "weights_sha256": profile.sae.weights_sha256,
            "hook_name": profile.sae.hook_name,
            "d_sae": profile.sae.d_sae,
        },
        "features": [feature_to_dict(f) for f in profile.features],
    }
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# ---- reading ---------------------------------------------------------------------------


def loads(text: str) -> ProfileDocument:
    """Parses and checks a document; every error names the offending field path."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(
            f"The profile is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.",
            param=_PARAM,
        ) from None
    except ValueError as exc:  # NaN or Infinity
        raise InvalidArgumentError(f"The profile is not valid JSON: {exc}", param=_PARAM) from None
    except RecursionError:  # nesting deep enough to exhaust the parser's stack
        message = "The profile nests too deeply to be one."
        raise InvalidArgumentError(message, param=_PARAM) from None
    top = _object(value, "", required=("schema", "name", "model", "sae", "features"),
                  optional=("description",))  # fmt: skip
    schema = _string(top, "schema", "")
    if schema != SCHEMA:
        hint = (
            f"this server reads '{SCHEMA}' only"
            if schema.startswith(_SCHEMA_FAMILY)
            else f'a miLLM profile says "schema": "{SCHEMA}"'
        )
        raise UnsupportedError(f"Unknown profile schema '{schema}': {hint}.", param=_PARAM)
    name = _string(top, "name", "")
    validate_name(name, param=_PARAM)
    description = validate_description(_string(top, "description", "", default=""), param=_PARAM)
    model = _string(top, "model", "")
    sae = _sae(top["sae"])
    items = _array(top["features"], "features")
    features = tuple(feature_from_dict(item, f"features[{n}]") for n, item in enumerate(items))
    # Indices are checked against the document's own SAE here; against the attached
    # SAE by the importer, as a mismatch.
    for n, feature in enumerate(features):
        if not 0 <= feature.index < sae.d_sae:
            raise _invalid(
                f"features[{n}].index",
                f"is {feature.index}, outside the profile's SAE (`sae.d_sae` {sae.d_sae}: "
                f"0 to {sae.d_sae - 1})",
            )
    try:
        validate_features(features, sae.d_sae)  # duplicates, count, finite strengths
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"Profile JSON: {exc.message}", param=_PARAM) from None
    return ProfileDocument(name, description, model, sae, features)


def feature_from_dict(value: object, path: str) -> SteeringFeature:
    item = _object(value, path, required=("index",),
                   optional=("mode", "strength", "normalize", "label"))  # fmt: skip
    index = _integer(item, "index", path)
    mode = _string(item, "mode", path, default="add")
    if mode not in MODES:
        raise _invalid(f"{path}.mode", f"must be one of {', '.join(MODES)}; got '{mode}'")
    strength = _number(item, "strength", path, default=0.0)
    normalize = item.get("normalize", False)
    if not isinstance(normalize, bool):
        raise _invalid(f"{path}.normalize", f"must be true or false; got {_kind(normalize)}")
    label = _string(item, "label", path, default="")
    return SteeringFeature(index, mode, strength, normalize, label)  # type: ignore[arg-type]


def _sae(value: object) -> SaeIdentity:
    sae = _object(value, "sae", required=("name", "weights_sha256", "hook_name", "d_sae"))
    sha = _string(sae, "weights_sha256", "sae")
    if not _SHA256.fullmatch(sha):
        raise _invalid("sae.weights_sha256", f"must be 64 lower-case hex digits; got '{sha}'")
    d_sae = _integer(sae, "d_sae", "sae")
    if d_sae < 1:
        raise _invalid("sae.d_sae", f"must be at least 1; got {d_sae}")
    return SaeIdentity(_string(sae, "name", "sae"), sha, _string(sae, "hook_name", "sae"), d_sae)


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number; strengths must be finite.")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _invalid(path: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"Profile JSON: `{path}` {problem}.", param=_PARAM)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string '{value[:40]}'" + ("..." if len(value) > 40 else "")
    if isinstance(value, list):
        return "an array"
    return "an object"


def _object(
    value: object, path: str, *, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        what = f"`{path}`" if path else "the document"
        raise InvalidArgumentError(
            f"Profile JSON: {what} must be an object; got {_kind(value)}.", param=_PARAM
        )
    known = required + optional
    for key in value:
        if key not in known:
            raise InvalidArgumentError(
                f"Profile JSON: unknown key `{_join(path, key)}` (known here: {', '.join(known)}).",
                param=_PARAM,
            )
    for key in required:
        if key not in value:
            raise _invalid(_join(path, key), "is missing")
    return value


def _array(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _invalid(path, f"must be an array; got {_kind(value)}")
    return value


_MISSING = object()


def _string(obj: dict[str, Any], key: str, path: str, default: object = _MISSING) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise _invalid(_join(path, key), f"must be a string; got {_kind(value)}")
    return value


def _integer(obj: dict[str, Any], key: str, path: str) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(_join(path, key), f"must be an integer; got {_kind(value)}")
    return value


def _number(obj: dict[str, Any], key: str, path: str, default: float) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(_join(path, key), f"must be a number; got {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _invalid(_join(path, key), "must be a finite number")
    return number
