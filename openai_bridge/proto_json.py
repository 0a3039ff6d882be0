"""millm.v1 messages <-> the bridge's JSON, driven by the message descriptors.

The conventions of /api/v1 and the `millm` extension (docs/management-api.md):

- keys are the proto field names (snake_case);
- enums are lower-case short names (`WEIGHT_FORMAT_SAFETENSORS` -> "safetensors"),
  and UNSPECIFIED, or a value newer than this bridge, is null;
- 64-bit integers are JSON numbers, not the strings of protobuf's own mapping;
- an empty string, an unset message and an unset `optional` field are null; of a
  real oneof only the chosen member appears (`"corpus": {"corpus_id": "..."}`);
- map keys are strings, in key order;
- a float32 keeps its shortest form (0.0004, not 0.0003999999898951501), and NaN
  or infinities are the strings "NaN", "Infinity" and "-Infinity".

`_FIELDS` and `_MESSAGES` list the few places where the API's shape differs.
The way in (`message`) takes JSON already checked by a request model, so it only
maps names: enums from their short names, nested objects to messages.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.internal.type_checkers import ToShortestFloat
from google.protobuf.message import Message

from millm.v1 import operation_pb2 as opb
from millm.v1 import steering_pb2 as stpb

M = TypeVar("M", bound=Message)

# An operation in one of these states changes no more; its watch ends after it.
FINAL_STATES = frozenset(
    {
        opb.OPERATION_STATE_SUCCEEDED,
        opb.OPERATION_STATE_FAILED,
        opb.OPERATION_STATE_CANCELLED,
    }
)

_64_BIT = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}


# ---------------------------------------------------------------- enums


def _enum_prefix(enum: EnumDescriptor) -> str:
    # The zero value is `<PREFIX>UNSPECIFIED` in every millm.v1 enum.
    return enum.values_by_number[0].name.removesuffix("UNSPECIFIED")


def enum_names(enum: EnumDescriptor) -> list[str]:
    """The JSON names of an enum's values: `["standard", "jumprelu", ...]`."""
    prefix = _enum_prefix(enum)
    return [v.name.removeprefix(prefix).lower() for v in enum.values if v.number != 0]


def enum_json(enum: EnumDescriptor, number: int) -> str | None:
    value = enum.values_by_number.get(number)
    if value is None or number == 0:
        return None
    return value.name.removeprefix(_enum_prefix(enum)).lower()


def _enum_number(enum: EnumDescriptor, name: str) -> int:
    return int(enum.values_by_name[_enum_prefix(enum) + name.upper()].number)


# ---------------------------------------------------------------- messages -> JSON


def to_json(message: Message) -> Any:
    """`message` as API JSON (an object, or what `_MESSAGES` makes of it)."""
    shape = _MESSAGES.get(message.DESCRIPTOR.full_name)
    return shape(message) if shape is not None else _fields(message)


def _fields(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in _descriptor(message).fields:
        name = field.name
        value = getattr(message, name)
        if (map_value := _map_value(field)) is not None:
            out[name] = {str(k): _value(map_value, value[k]) for k in sorted(value)}
        elif field.is_repeated and field.type == FieldDescriptor.TYPE_STRING:
            out[name] = list(value)  # "" in a list is an item, not "none"
        elif field.is_repeated:
            out[name] = [_value(field, v) for v in value]
        elif field.has_presence and not message.HasField(name):
            oneof = field.containing_oneof
            # A real oneof shows only its chosen member; an unset message or
            # `optional` scalar (a oneof of one) is null: "none".
            if oneof is None or len(oneof.fields) == 1:
                out[name] = None
        else:
            override = _FIELDS.get(field.full_name)
            out[name] = override(value) if override is not None else _value(field, value)
    return out


def _descriptor(message: Message) -> Descriptor:
    # The stubs also name upb's Descriptor class, which has the same interface.
    return cast(Descriptor, message.DESCRIPTOR)


def _map_value(field: FieldDescriptor) -> FieldDescriptor | None:
    """The value field of a map's entries; None when `field` is not a map."""
    entry = field.message_type
    if entry is None or not entry.GetOptions().map_entry:
        return None
    return entry.fields_by_name["value"]


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        return to_json(value)
    if field.enum_type is not None:
        return enum_json(field.enum_type, value)
    if field.type == FieldDescriptor.TYPE_STRING:
        return value or None
    if field.type in _64_BIT:
        return int(value)
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return _number(field, value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


def _number(field: FieldDescriptor, value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return ToShortestFloat(value) if field.type == FieldDescriptor.TYPE_FLOAT else value


def page(items: Iterable[Message], next_page_token: str = "") -> dict[str, Any]:
    """Every list's shape: `{"data": [...], "next_page_token": "..." | null}`."""
    return {"data": [to_json(m) for m in items], "next_page_token": next_page_token or None}


def compact(payload: dict[str, Any]) -> str:
    """A WebSocket text frame: the same bytes Starlette's JSONResponse writes."""
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


# ---------------------------------------------------------------- JSON -> messages


def message(cls: type[M], data: dict[str, Any]) -> M:
    """A `cls` from request JSON; absent and null fields stay unset (the default)."""
    result = cls()
    fill(result, data)
    return result


def fill(target: Message, data: dict[str, Any]) -> None:
    """Sets the fields `data` names; a list replaces the repeated field's items."""
    fields = _descriptor(target).fields_by_name
    for key, value in data.items():
        if value is None:
            continue
        field = fields[key]
        if field.is_repeated:
            items = getattr(target, key)
            del items[:]
            for item in value:
                if field.message_type is not None:
                    fill(items.add(), item)
                else:
                    items.append(_scalar_in(field, item))
        elif field.message_type is not None:
            child = getattr(target, key)
            child.SetInParent()
            fill(child, value)
        else:
            setattr(target, key, _scalar_in(field, value))


def _scalar_in(field: FieldDescriptor, value: Any) -> Any:
    return _enum_number(field.enum_type, value) if field.enum_type is not None else value


# ---------------------------------------------------------------- where the API differs


def _zero_is_unknown(value: int) -> int | None:
    return value or None


def _lower(reason: str) -> str | None:
    # Lower case, like the `code` of an OpenAI error object.
    return reason.lower() or None


def _steering_mode(mode: int) -> str:
    # The service treats UNSPECIFIED as ADD, so it reads as "add" here too.
    return enum_json(stpb.SteeringMode.DESCRIPTOR, mode) or "add"


def _operation(op: opb.Operation) -> dict[str, Any]:
    """With `done` after `state`, so that a client need not know which states are final."""
    out: dict[str, Any] = {}
    for key, value in _fields(op).items():
        out[key] = value
        if key == "state":
            out["done"] = op.state in FINAL_STATES
    return out


def _sae_source(source: Message) -> dict[str, Any] | None:
    """`{"type": "hub", "repo_id": ...}`: the oneof's member named by `type` beside its fields."""
    kind = source.WhichOneof("kind")
    return None if kind is None else {"type": kind, **_fields(getattr(source, kind))}


_FIELDS: dict[str, Callable[[Any], Any]] = {
    # 0 means "unknown" here.
    "millm.v1.CachedModel.parameter_count": _zero_is_unknown,
    "millm.v1.Operation.bytes_total": _zero_is_unknown,
    "millm.v1.Operation.finished_at_unix_ms": _zero_is_unknown,
    "millm.v1.SaeCandidate.d_in": _zero_is_unknown,
    "millm.v1.SaeCandidate.d_sae": _zero_is_unknown,
    "millm.v1.SteeringState.d_sae": _zero_is_unknown,
    "millm.v1.ProfileSae.d_sae": _zero_is_unknown,
    # 0: nothing observed yet to suggest a strength from.
    "millm.v1.Feature.suggested_strength": _zero_is_unknown,
    "millm.v1.Operation.error_reason": _lower,
    "millm.v1.CompatibilityIssue.reason": _lower,
    "millm.v1.SaeRestore.reason": _lower,
    "millm.v1.SteeringFeature.mode": _steering_mode,
    # A token can decode to "", which is text, not "none".
    "millm.v1.TokenActivations.token": str,
    "millm.v1.LensToken.token": str,
}
_MESSAGES: dict[str, Callable[[Any], Any]] = {
    "millm.v1.Operation": _operation,
    "millm.v1.SaeSource": _sae_source,
}
