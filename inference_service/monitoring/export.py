"""The monitoring history as JSON or CSV text."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

from inference_service.errors import InvalidArgumentError
from inference_service.monitoring.types import ActivationFrame, FeatureValue

CONTENT_TYPES = {"json": "application/json", "csv": "text/csv"}
CSV_HEADER = (
    "request_id",
    "source",
    "hook_name",
    "captured_at_unix_ms",
    "position",
    "token_id",
    "token",
    "kind",  # "selected" (asked for by index) or "top" (among the most active)
    "feature",
    "value",
)


def content_type(format: str) -> str:
    """The MIME type of `format`; InvalidArgumentError for an unknown format."""
    try:
        return CONTENT_TYPES[format]
    except KeyError:
        raise InvalidArgumentError(
            f"Unknown export format {format!r}; use 'json' or 'csv'.", param="format"
        ) from None


def export(frames: Sequence[ActivationFrame], format: str) -> tuple[str, str]:
    """Returns (text, content type) for `format` "json" or "csv"."""
    kind = content_type(format)
    return (to_json(frames) if format == "json" else to_csv(frames)), kind


def frame_dict(frame: ActivationFrame) -> dict[str, Any]:
    return {
        "request_id": frame.request_id,
        "source": frame.source,
        "hook_name": frame.hook_name,
        "captured_at_unix_ms": frame.captured_at_unix_ms,
        "tokens": [
            {
                "position": t.position,
                "token_id": t.token_id,
                "token": t.token,
                "features": _values(t.features),
                "top": _values(t.top),
            }
            for t in frame.tokens
        ],
    }


def to_json(frames: Iterable[ActivationFrame]) -> str:
    return json.dumps([frame_dict(f) for f in frames], ensure_ascii=False)


def to_csv(frames: Iterable[ActivationFrame]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for frame in frames:
        head = (frame.request_id, frame.source, frame.hook_name, frame.captured_at_unix_ms)
        for t in frame.tokens:
            where = (*head, t.position, t.token_id, t.token)
            for kind, values in (("selected", t.features), ("top", t.top)):
                writer.writerows((*where, kind, v.index, v.value) for v in values)
    return out.getvalue()


def _values(values: Iterable[FeatureValue]) -> list[dict[str, Any]]:
    return [{"index": v.index, "value": v.value} for v in values]
