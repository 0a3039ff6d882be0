"""The live steering as JSON, as the attachment history keeps it across restarts."""

from __future__ import annotations

import json

from inference_service.steering.types import MODES, SteeringFeature, SteeringSet


def dumps(steering: SteeringSet) -> str:
    return json.dumps(
        {
            "enabled": steering.enabled,
            "features": [
                {
                    "index": f.index,
                    "mode": f.mode,
                    "strength": float(f.strength),
                    "normalize": f.normalize,
                    "label": f.label,
                }
                for f in steering.features
            ],
        },
        sort_keys=True,
    )


def loads(text: str) -> SteeringSet:
    """The steering `dumps` wrote; raises ValueError (or KeyError, TypeError) on anything else."""
    document = json.loads(text)
    features = []
    for item in document["features"]:
        if item["mode"] not in MODES:
            raise ValueError(f"unknown steering mode {item['mode']!r}")
        features.append(
            SteeringFeature(
                index=int(item["index"]),
                mode=item["mode"],
                strength=float(item["strength"]),
                normalize=bool(item["normalize"]),
                label=str(item["label"]),
            )
        )
    return SteeringSet(tuple(features), bool(document["enabled"]))
