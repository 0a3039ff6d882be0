"""A cached SAE's record: what the database keeps about one SAE in the cache."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class SaeState(StrEnum):
    """The state of a cached SAE's files (`millm.v1.SaeState`)."""

    DOWNLOADING = "downloading"
    READY = "ready"
    CORRUPTED = "corrupted"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class SaeRecord:
    """A cached SAE. What it is (d_in, hook, ...) lives in `spec`, a JSON object
    `catalog.spec_from_json` reads; where it came from lives in `source`. Both are
    plain dicts so new fields need no migration."""

    id: str
    name: str
    source_key: str  # unique per origin, so a second download of it finds this record
    source: dict[str, Any]
    format: str
    state: SaeState
    size_bytes: int
    weights_sha256: str | None
    local_dir: str  # relative to the data directory
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime
