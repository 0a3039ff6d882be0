"""Fetches chosen files of one Hub repository commit, resumably, and verifies each.

Models and SAEs both download through here: the same `.part` resume, the same
progress stages ("downloading", "verifying", "done") and the same integrity check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.hf_api import ModelInfo
from huggingface_hub.utils import build_hf_headers

from inference_service.errors import CorruptedFileError
from inference_service.hub.errors import hub_error
from inference_service.hub.fetch import fetch_file
from inference_service.hub.files import RemoteFile, file_digest_matches

# (stage, bytes_done, bytes_total)
ProgressFn = Callable[[str, int, int], None]


def repo_info(repo_id: str, revision: str, token: str | None, endpoint: str | None) -> ModelInfo:
    """The repository's metadata with every file's size and checksum."""
    try:
        return HfApi(endpoint=endpoint).model_info(
            repo_id, revision=revision, files_metadata=True, token=token
        )
    except Exception as exc:
        raise hub_error(exc, repo_id, revision) from exc


def fetch_verified(
    *,
    repo_id: str,
    revision: str,
    commit: str,
    files: Sequence[RemoteFile],
    target: Path,
    token: str | None,
    endpoint: str | None,
    progress: ProgressFn,
    is_cancelled: Callable[[], bool],
    what: str = "model",
) -> None:
    """Downloads `files` (repository paths) under `target`, keeping their relative paths."""
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
            f"was removed; download the {what} again."
        )
    progress("done", total, total)


def _bytes_on_disk(target: Path, remote: RemoteFile) -> int:
    final = target / remote.path
    if final.exists():
        return min(final.stat().st_size, remote.size)
    part = final.with_name(final.name + ".part")
    return min(part.stat().st_size, remote.size) if part.exists() else 0
