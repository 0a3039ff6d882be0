"""Which files of a Hub repository make up a model, with what checks them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub.hf_api import ModelInfo

WeightFormat = Literal["safetensors", "pytorch"]

# Weight files of other frameworks or formats that a Transformers load never needs.
_FOREIGN_WEIGHTS = (".gguf", ".onnx", ".onnx_data", ".msgpack", ".h5", ".ot", ".tflite", ".mlmodel")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files
    git_sha1: str | None  # regular files: the git blob id


def remote_files(info: ModelInfo) -> list[RemoteFile]:
    return [
        RemoteFile(
            path=s.rfilename,
            size=(s.lfs.size if s.lfs else s.size) or 0,
            sha256=s.lfs.sha256 if s.lfs else None,
            git_sha1=None if s.lfs else s.blob_id,
        )
        for s in info.siblings or []
    ]


def select_model_files(
    files: list[RemoteFile], wanted: WeightFormat | None
) -> tuple[WeightFormat, list[RemoteFile]]:
    """Keeps configs, tokenizer files and one weight format (safetensors preferred)."""
    has = {
        "safetensors": any(f.path.endswith(".safetensors") for f in files),
        "pytorch": any(f.path.endswith(".bin") for f in files),
    }
    chosen: WeightFormat | None = wanted or (
        "safetensors" if has["safetensors"] else "pytorch" if has["pytorch"] else None
    )
    if chosen is None or not has[chosen]:
        available = [k for k, v in has.items() if v] or ["none"]
        wanted_text = wanted or "model"
        raise ValueError(
            f"The repository has no {wanted_text} weights (available: {', '.join(available)})."
        )
    skip = ".bin" if chosen == "safetensors" else ".safetensors"
    kept = [
        f
        for f in files
        if not f.path.endswith(skip)
        and not f.path.endswith(_FOREIGN_WEIGHTS)
        and not f.path.startswith(("onnx/", "openvino/", "coreml/"))
    ]
    return chosen, kept


def file_digest_matches(path: Path, remote: RemoteFile) -> bool:
    """True when `path` has the remote file's content (sha256 for LFS, git blob sha1 otherwise)."""
    if path.stat().st_size != remote.size:
        return False
    if remote.sha256:
        digest = hashlib.sha256()
        expected = remote.sha256
    elif remote.git_sha1:
        digest = hashlib.sha1(f"blob {remote.size}\0".encode(), usedforsecurity=False)
        expected = remote.git_sha1
    else:
        return True  # the Hub gave nothing to check but the size
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == expected
