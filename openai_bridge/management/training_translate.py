"""Pure translation for /api/v1/training: JSON <-> millm.v1 training messages.

Driven by the message descriptors rather than written out field by field, so the
JSON follows the proto (`preserving_proto_field_name`) and a field added there
needs no change here. On top of protobuf's JSON mapping, the conventions of the
rest of /api/v1 (docs/management-api.md):

- enums are lower-case short names (`TRAINING_STATE_RUNNING` -> "running"), and
  UNSPECIFIED is null;
- 64-bit integers are JSON numbers, not the strings of the protobuf mapping;
- an empty string and an unset message field are null; of a oneof only the
  chosen member appears (`"corpus": {"corpus_id": "..."}`);
- floats keep protobuf's shortest form (a float32 4e-4 is 0.0004), and NaN or
  infinities are the strings "NaN", "Infinity" and "-Infinity" (a loss can be).

On the way in, null or an absent field means "default" (zero, which the service
fills in), and every field is type-checked here so that a mistake is a 400
naming it (`param: "config.k"`), never an error deeper down.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import AsyncIterator
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from millm.v1 import training_pb2 as tpb
from millm.v1 import training_service_pb2 as tspb
from openai_bridge.errors import invalid_request
from openai_bridge.management.schemas import (
    UINT64_MAX,
    TrainingConfigJson,
    TrainingRunBody,
    TrainingTemplateBody,
    TrainingTemplateUpdateBody,
)
from openai_bridge.management.translate import page_size

# The service stores the upload as it comes; 1 MiB messages keep each one well
# under gRPC's 4 MiB default limit while costing few round trips.
UPLOAD_CHUNK_BYTES = 1 << 20

# Limits of the service (ListTrainingMetricsRequest.limit).
MAX_METRICS_LIMIT = 10_000

_INTEGERS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_64_BIT = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}
_FLOATS = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}


# ---------------------------------------------------------------- enums


def _enum_prefix(enum: EnumDescriptor) -> str:
    # The zero value is `<PREFIX>UNSPECIFIED` in every millm.v1 enum.
    return enum.values_by_number[0].name.removesuffix("UNSPECIFIED")


def enum_names(enum: EnumDescriptor) -> list[str]:
    """The JSON names of an enum's values: `["standard", "jumprelu", ...]`."""
    prefix = _enum_prefix(enum)
    return [v.name.removeprefix(prefix).lower() for v in enum.values if v.number != 0]


def _enum_json(enum: EnumDescriptor, number: int) -> str | None:
    value = enum.values_by_number.get(number)
    if value is None or number == 0:
        return None
    return value.name.removeprefix(_enum_prefix(enum)).lower()


def _enum_number(enum: EnumDescriptor, value: Any, param: str) -> int:
    if isinstance(value, str) and value == value.lower():
        found = enum.values_by_name.get(_enum_prefix(enum) + value.upper())
        if found is not None and found.number != 0:
            return int(found.number)
    allowed = ", ".join(f'"{name}"' for name in enum_names(enum))
    raise invalid_request(f"`{param}` must be one of {allowed}; got {_shown(value)}.", param)


# ---------------------------------------------------------------- messages -> JSON


def _descriptor(message: Message) -> Descriptor:
    # The stubs also name upb's Descriptor class, which has the same interface.
    return cast(Descriptor, message.DESCRIPTOR)


def message_json(message: Message) -> dict[str, Any]:
    """Any training message (a response, a run, a template) as API JSON."""
    plain = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _shaped(message, plain)


def _shaped(message: Message, plain: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    descriptor = _descriptor(message)
    for field in descriptor.fields:
        name = field.name
        value = getattr(message, name)
        if field.is_repeated:
            items = plain.get(name, [])
            if field.message_type is not None:
                out[name] = [_shaped(m, p) for m, p in zip(value, items, strict=True)]
            else:
                out[name] = [_scalar(field, v, p) for v, p in zip(value, items, strict=True)]
        elif field.has_presence and not message.HasField(name):
            oneof = field.containing_oneof
            # A real oneof shows only its chosen member; an unset message or
            # `optional` scalar (a oneof of one) is null: "none".
            if oneof is None or len(oneof.fields) == 1:
                out[name] = None
        elif field.message_type is not None:
            out[name] = _shaped(value, plain[name])
        else:
            out[name] = _scalar(field, value, plain.get(name))
    return out


def _scalar(field: FieldDescriptor, value: Any, plain: Any) -> Any:
    if field.enum_type is not None:
        return _enum_json(field.enum_type, value)
    if field.type in _64_BIT:
        return int(value)
    if field.type in _FLOATS:
        return plain  # shortest float form; NaN and infinities as strings
    if field.type == FieldDescriptor.TYPE_STRING:
        return value or None
    if field.type == FieldDescriptor.TYPE_BYTES:
        return plain  # base64
    return value


def _compact(payload: dict[str, Any]) -> str:
    # The same bytes Starlette's JSONResponse would write.
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def watch_frame(response: tspb.WatchTrainingRunResponse) -> str:
    """One WebSocket text frame: `{"type": "run", "run": {...}, "metrics": [...]}`."""
    return _compact({"type": "run", **message_json(response)})


# ---------------------------------------------------------------- JSON -> messages


def config_message(data: TrainingConfigJson | None, param: str = "config") -> tpb.TrainingConfig:
    """A JSON training config as the message; absent and null fields stay zero (default)."""
    message = tpb.TrainingConfig()
    if data is not None:
        fill_message(message, data, param)
    return message


def fill_message(message: Message, data: Any, param: str) -> None:
    """Sets `message`'s fields from the JSON object `data`; raises a 400 naming the field."""
    if not isinstance(data, dict):
        raise invalid_request(f"`{param}` must be a JSON object; got {_shown(data)}.", param)
    descriptor = _descriptor(message)
    chosen: dict[str, str] = {}
    for key, value in data.items():
        where = f"{param}.{key}"
        field = descriptor.fields_by_name.get(key)
        if field is None or field.is_repeated:
            raise invalid_request(_unknown_field(descriptor, key, where), where)
        if value is None:
            continue  # null: the default
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in chosen:
                names = " or ".join(f"`{f.name}`" for f in oneof.fields)
                raise invalid_request(f"`{param}` takes {names}, not both.", param)
            chosen[oneof.name] = key
        if field.message_type is not None:
            child = getattr(message, key)
            child.SetInParent()
            fill_message(child, value, where)
        elif field.enum_type is not None:
            setattr(message, key, _enum_number(field.enum_type, value, where))
        else:
            _set_scalar(message, field, value, where)


def _unknown_field(descriptor: Descriptor, key: str, where: str) -> str:
    names = [f.name for f in descriptor.fields if not f.is_repeated]
    close = difflib.get_close_matches(key, names, n=1)
    return f"Unknown field `{where}`." + (f" Did you mean `{close[0]}`?" if close else "")


def _set_scalar(message: Message, field: FieldDescriptor, value: Any, param: str) -> None:
    # JSON's own types only: protobuf's mapping would also take "32" for 32 and
    # true for 1.0, which in a hand-written config is more likely a mistake.
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if field.type in _INTEGERS or field.type in _FLOATS:
        fits = number
    elif field.type == FieldDescriptor.TYPE_BOOL:
        fits = isinstance(value, bool)
    elif field.type == FieldDescriptor.TYPE_STRING:
        fits = isinstance(value, str)
    else:
        fits = True
    if isinstance(value, str) and "\x00" in value:
        # Paths and ids: the OS refuses a NUL byte in a path with a ValueError.
        raise invalid_request(f"`{param}` holds a NUL byte (\\u0000).", param)
    if fits:
        try:
            json_format.ParseDict({field.name: value}, message)
            return
        except json_format.ParseError:
            pass  # out of range, a fraction for an integer, a float too large
    raise invalid_request(f"`{param}` must be {_expected(field)}; got {_shown(value)}.", param)


def _expected(field: FieldDescriptor) -> str:
    if field.type in _INTEGERS:
        low, high = _INTEGERS[field.type]
        return f"an integer from {low} to {high}"
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return "a number within the range of a 32-bit float"
    if field.type == FieldDescriptor.TYPE_DOUBLE:
        return "a number"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "true or false"
    if field.type == FieldDescriptor.TYPE_STRING:
        return "a string"
    return "a valid value"


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- requests


def start_request(body: TrainingRunBody) -> tspb.StartTrainingRequest:
    return tspb.StartTrainingRequest(
        name=body.name or "",
        template_id=body.template_id or "",
        config=config_message(body.config) if body.config is not None else None,
    )


def list_runs_request(size: int | None, token: str | None) -> tspb.ListTrainingRunsRequest:
    return tspb.ListTrainingRunsRequest(page_size=page_size(size), page_token=token or "")


def list_metrics_request(
    id_: str, after_step: int | None, limit: int | None
) -> tspb.ListTrainingMetricsRequest:
    """0 for `limit` lets the service choose (1000)."""
    if after_step is not None and not 0 <= after_step <= UINT64_MAX:
        raise invalid_request(f"`after_step` must be 0 to {UINT64_MAX}.", "after_step")
    if limit is not None and not 1 <= limit <= MAX_METRICS_LIMIT:
        raise invalid_request(f"`limit` must be 1 to {MAX_METRICS_LIMIT}.", "limit")
    return tspb.ListTrainingMetricsRequest(id=id_, after_step=after_step or 0, limit=limit or 0)


def create_template_request(body: TrainingTemplateBody) -> tspb.CreateTrainingTemplateRequest:
    return tspb.CreateTrainingTemplateRequest(
        name=body.name,
        description=body.description or "",
        config=config_message(body.config) if body.config is not None else None,
        favourite=body.favourite,
    )


def update_template_request(
    id_: str, body: TrainingTemplateUpdateBody
) -> tspb.UpdateTrainingTemplateRequest:
    """Only the fields the body has: the service keeps the rest."""
    fields: dict[str, Any] = {"id": id_}
    if body.name is not None:
        fields["name"] = body.name
    if body.description is not None:
        fields["description"] = body.description
    if body.favourite is not None:
        fields["favourite"] = body.favourite
    if body.config is not None:
        fields["config"] = config_message(body.config)
    return tspb.UpdateTrainingTemplateRequest(**fields)


_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


def template_filename(document: str, id_: str) -> str:
    """`<template name>.json` from the exported document, header-safe (the id if no name)."""
    try:
        value = json.loads(document)
    except ValueError:
        value = None
    name = value.get("name") if isinstance(value, dict) else None
    stem = _UNSAFE_FILENAME.sub("_", name).strip("._") if isinstance(name, str) else ""
    return f"{stem or id_}.json"


async def upload_requests(
    name: str, body: AsyncIterator[bytes]
) -> AsyncIterator[tspb.UploadCorpusRequest]:
    """The UploadCorpus messages for a raw body: the name, then ~1 MiB pieces of data."""
    yield tspb.UploadCorpusRequest(name=name)
    pending = bytearray()
    async for piece in body:
        pending += piece
        while len(pending) >= UPLOAD_CHUNK_BYTES:
            yield tspb.UploadCorpusRequest(data=bytes(pending[:UPLOAD_CHUNK_BYTES]))
            del pending[:UPLOAD_CHUNK_BYTES]
    if pending:
        yield tspb.UploadCorpusRequest(data=bytes(pending))
