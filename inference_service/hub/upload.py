"""Uploads a local folder (an SAE, say) into a Hugging Face Hub repository, in one commit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from inference_service.errors import InvalidArgumentError, MillmError, PermissionDeniedError
from inference_service.hub.errors import hub_error

log = logging.getLogger(__name__)

# (stage, bytes_done, bytes_total)
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class UploadResult:
    repo_id: str
    path_in_repo: str
    commit_sha: str
    url: str  # the commit's URL on the Hub
    uploaded_bytes: int  # size of the folder's files; the client skips those the Hub has


def upload_folder(
    *,
    folder: Path,
    repo_id: str,
    path_in_repo: str,
    token: str | None,
    private: bool,
    endpoint: str | None,
    commit_message: str,
    progress: ProgressFn,
) -> UploadResult:
    """Creates ``repo_id`` if missing and commits the files of ``folder`` under ``path_in_repo``.

    Progress stages: "creating_repo", "uploading", "done". huggingface_hub reports no
    byte progress for uploads, so "uploading" is sent once, before the transfer.
    """
    if not token:
        raise PermissionDeniedError(
            f"Uploading to '{repo_id}' needs a Hub token with write access: pass a token with "
            "the request or set HF_TOKEN for the inference service.",
            param="token",
        )
    if ".." in path_in_repo.split("/"):
        raise InvalidArgumentError(
            f"path_in_repo '{path_in_repo}' leaves the repository.", param="path_in_repo"
        )
    total = _folder_bytes(folder)
    api = HfApi(endpoint=endpoint)
    try:
        progress("creating_repo", 0, total)
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        progress("uploading", 0, total)
        commit = api.upload_folder(
            folder_path=folder,
            path_in_repo=path_in_repo,
            repo_id=repo_id,
            commit_message=commit_message,
            token=token,
        )
    except Exception as exc:
        raise _upload_error(exc, repo_id) from exc
    progress("done", total, total)
    log.info(
        "uploaded %d bytes from %s to %s/%s (commit %s)",
        total,
        folder,
        repo_id,
        path_in_repo,
        commit.oid,
    )
    return UploadResult(repo_id, path_in_repo, commit.oid, commit.commit_url, total)


def _folder_bytes(folder: Path) -> int:
    """Total size of the files `HfApi.upload_folder` sends: it skips .git and its own caches."""
    if not folder.is_dir():
        raise InvalidArgumentError(f"{folder} is not a folder.", param="folder")
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    sent = list(filter_repo_objects(files, ignore_patterns=DEFAULT_IGNORE_PATTERNS))
    if not sent:
        raise InvalidArgumentError(f"{folder} has no files to upload.", param="folder")
    return sum(files[name].stat().st_size for name in sent)


def _upload_error(exc: Exception, repo_id: str) -> MillmError:
    # A failed LFS transfer arrives wrapped in a RuntimeError; the HTTP answer is its cause.
    if isinstance(exc, RuntimeError) and isinstance(exc.__cause__, Exception):
        exc = exc.__cause__
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        # hub_error words these for reading; an upload is fixed by a token that may write.
        return PermissionDeniedError(
            f"The Hub did not let this token write to '{repo_id}': pass a token with write "
            "access to it, or set HF_TOKEN for the inference service.",
            param="token",
        )
    return hub_error(exc, repo_id, "main")
