"""Downloads one model repository into the cache, resumably, and verifies every file."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inference_service.errors import InvalidArgumentError
from inference_service.hub.files import (
    RemoteFile,
    WeightFormat,
    remote_files,
    select_model_files,
)
from inference_service.hub.snapshot import ProgressFn, fetch_verified, repo_info

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadedModel:
    repo_id: str
    revision: str
    commit_sha: str
    format: WeightFormat
    local_dir: Path
    files: tuple[RemoteFile, ...]

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)


def repo_dir(cache_root: Path, repo_id: str, commit_sha: str) -> Path:
    return cache_root / repo_id.replace("/", "--") / commit_sha


def download_model(
    *,
    repo_id: str,
    revision: str,
    token: str | None,
    wanted_format: WeightFormat | None,
    cache_root: Path,
    endpoint: str | None,
    progress: ProgressFn,
    is_cancelled: Callable[[], bool],
) -> DownloadedModel:
    progress("resolving", 0, 0)
    info = repo_info(repo_id, revision, token, endpoint)
    try:
        chosen, files = select_model_files(remote_files(info), wanted_format)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc), param="format") from exc
    commit = info.sha or revision
    target = repo_dir(cache_root, repo_id, commit)
    fetch_verified(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        files=files,
        target=target,
        token=token,
        endpoint=endpoint,
        progress=progress,
        is_cancelled=is_cancelled,
    )
    return DownloadedModel(repo_id, revision, commit, chosen, target, tuple(files))
