"""Cached language models as plain values: what the catalog lists and the database keeps."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path


class ModelFormat(StrEnum):
    """How weights are stored (`millm.v1.WeightFormat`)."""

    SAFETENSORS = "safetensors"
    PYTORCH = "pytorch"
    GGUF = "gguf"


class CachedModelState(StrEnum):
    """The state of a cached model's files (`millm.v1.CachedModelState`); not to be
    confused with `host.ModelState`, the lifecycle of the model being served."""

    DOWNLOADING = "downloading"
    READY = "ready"
    CORRUPTED = "corrupted"
    MISSING = "missing"


def cached_model_id(repo_id: str, revision: str) -> str:
    """The key of a downloaded model: `owner/name@revision`."""
    return f"{repo_id}@{revision}"


@dataclass(frozen=True, slots=True)
class ModelFile:
    path: str  # relative to the model's local_dir, '/'-separated
    size_bytes: int
    sha256: str | None = None
    verified: bool = False


@dataclass(frozen=True)
class CachedModel:
    id: str
    repo_id: str
    revision: str
    commit_sha: str  # empty while unknown
    format: ModelFormat
    parameter_count: int  # 0 while unknown
    size_bytes: int
    state: CachedModelState
    local_dir: Path | None  # never shown to clients; None until the files have a folder
    files: tuple[ModelFile, ...] = ()  # only from `ModelRecords.get`
    created_at: datetime | None = None  # None for the built-in model, which has no record
    updated_at: datetime | None = None
