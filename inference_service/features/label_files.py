"""Label files: miLLM's own JSON export, and Neuronpedia's explanation export.

miLLM:       {"sae_sha256": "...", "labels": [{"index", "label", "notes", "source"}]}
Neuronpedia: [{"index": "1234" or 1234, "description": "...", ...}], other keys ignored.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from inference_service.errors import InvalidArgumentError
from inference_service.features.types import FeatureLabel, LabelSource


class LabelFormat(StrEnum):
    MILLM = "millm"
    NEURONPEDIA = "neuronpedia"


def export_labels(sha: str, labels: list[FeatureLabel]) -> bytes:
    document = {
        "sae_sha256": sha,
        "labels": [
            {"index": x.index, "label": x.label, "notes": x.notes, "source": x.source}
            for x in labels
        ],
    }
    return json.dumps(document, ensure_ascii=False, indent=1).encode()


def parse_labels(data: bytes, layout: LabelFormat, d_sae: int) -> list[FeatureLabel]:
    """The labels a file holds; INVALID_ARGUMENT naming the first thing wrong."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgumentError(
            f"The labels file is not UTF-8 JSON: {exc}.", param="data"
        ) from None
    if layout is LabelFormat.NEURONPEDIA:
        items = _list(document, "a JSON list of explanations")
        return [_neuronpedia(item, n, d_sae) for n, item in enumerate(items)]
    if not isinstance(document, dict) or "labels" not in document:
        raise InvalidArgumentError(
            'A miLLM labels file is an object with "labels" (a Neuronpedia export needs '
            "format LABEL_FORMAT_NEURONPEDIA).",
            param="data",
        )
    items = _list(document["labels"], '"labels" as a list')
    return [_millm(item, n, d_sae) for n, item in enumerate(items)]


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidArgumentError(f"The labels file must hold {what}.", param="data")
    return value


def _millm(item: Any, n: int, d_sae: int) -> FeatureLabel:
    where = f"labels[{n}]"
    if not isinstance(item, dict):
        raise InvalidArgumentError(f"{where} is not an object.", param="data")
    texts = {}
    for key in ("label", "notes"):
        value = item.get(key, "")
        if not isinstance(value, str):
            raise InvalidArgumentError(f"{where}.{key} is not a string.", param="data")
        texts[key] = value
    index = _index(item.get("index"), f"{where}.index", d_sae)
    return FeatureLabel(index, texts["label"], texts["notes"], LabelSource.MILLM_IMPORT)


def _neuronpedia(item: Any, n: int, d_sae: int) -> FeatureLabel:
    where = f"[{n}]"
    if not isinstance(item, dict):
        raise InvalidArgumentError(f"{where} is not an object.", param="data")
    description = item.get("description")
    if not isinstance(description, str):
        raise InvalidArgumentError(f"{where}.description is missing or not a string.", param="data")
    index = _index(item.get("index"), f"{where}.index", d_sae)
    return FeatureLabel(index, description.strip(), "", LabelSource.NEURONPEDIA)


def _index(value: Any, where: str, d_sae: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{where} is missing or not an integer.", param="data")
    if not 0 <= value < d_sae:
        raise InvalidArgumentError(
            f"{where} is {value}; this SAE has features 0 to {d_sae - 1}.", param="data"
        )
    return value
