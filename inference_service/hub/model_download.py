"""Downloads one model repository into the cache, resumably, and verifies every file."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.utils import build_hf_headers

from inference_service.errors import CorruptedFileError, InvalidArgumentError
from inference_service.hub.errors import hub_error
from inference_service.hub.fetch import fetch_file
from inference_service.hub.files import (
    RemoteFile,
    WeightFormat,
    file_digest_matches,
    remote_files,
    select_model_files,
)

log = logging.getLogger(__name__)

# (stage, bytes_done, bytes_total)
ProgressFn = Callable[[str, int, int], None]


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
    try:
        info = HfApi(endpoint=endpoint).model_info(
            repo_id, revision=revision, files_metadata=True, token=token
        )
    except Exception as exc:
        raise hub_error(exc, repo_id, revision) from exc
    try:
        chosen, files = select_model_files(remote_files(info), wanted_format)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc), param="format") from exc
    commit = info.sha or revision
    target = repo_dir(cache_root, repo_id, commit)
    total = sum(f.size for f in files)
    # Bytes already on disk (whole files and partials) count as done: a resume
    # starts where the last attempt stopped.
    done = sum(_bytes_on_disk(target, f) for f in files)
    progress("downloading", done, total)

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        progress("downloading", done, total)

    headers = build_hf_headers(token=token)
    with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=60.0)) as client:
        for remote in files:
            final = target / remote.path
            if final.exists() and final.stat().st_size == remote.size:
                continue
            part = final.with_name(final.name + ".part")
            url = hf_hub_url(repo_id, remote.path, revision=commit, endpoint=endpoint)
            try:
                fetch_file(client, url, part, remote.size, headers, on_bytes, is_cancelled)
            except (httpx.HTTPStatusError, httpx.TransportError) as exc:
                # Retries are exhausted: report what the caller can act on.
                raise hub_error(exc, repo_id, revision) from exc
            part.replace(final)

    progress("verifying", done, total)
    corrupted = [f.path for f in files if not file_digest_matches(target / f.path, f)]
    if corrupted:
        for path in corrupted:
            (target / path).unlink(missing_ok=True)
        raise CorruptedFileError(
            f"{', '.join(corrupted)} failed the integrity check against the Hub's checksum and "
            "was removed; download the model again."
        )
    progress("done", total, total)
    return DownloadedModel(repo_id, revision, commit, chosen, target, tuple(files))


def _bytes_on_disk(target: Path, remote: RemoteFile) -> int:
    final = target / remote.path
    if final.exists():
        return min(final.stat().st_size, remote.size)
    part = final.with_name(final.name + ".part")
    return min(part.stat().st_size, remote.size) if part.exists() else 0
