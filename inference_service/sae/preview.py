"""What SAEs a Hub repository holds, read from its file list and small configs only."""

from __future__ import annotations

import dataclasses
import json
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from huggingface_hub import hf_hub_url
from huggingface_hub.utils import build_hf_headers

from inference_service.errors import MillmError, NotFoundError
from inference_service.hub.files import RemoteFile, remote_files
from inference_service.hub.snapshot import repo_info
from inference_service.sae.formats import (
    SAE_WEIGHT_FILES,
    find_sae_folders,
    spec_from_config,
    spec_from_path,
)
from inference_service.sae.spec import SaeFormat, SaeSpec

# Configs fetched at once; a repository can hold hundreds of SAEs.
_PARALLEL_FETCHES = 8
# Largest listing a preview reads configs for (the rest come from paths alone).
_MAX_CONFIGS = 400


@dataclass(frozen=True)
class Candidate:
    path: str  # folder in the repository; "" for the root
    format: SaeFormat
    spec: SaeSpec | None
    size_bytes: int
    files: tuple[RemoteFile, ...]
    problem: str = ""


@dataclass(frozen=True)
class RepoListing:
    repo_id: str
    revision: str
    commit_sha: str
    candidates: tuple[Candidate, ...]

    def find(self, path: str) -> Candidate:
        path = path.strip("/")
        for candidate in self.candidates:
            if candidate.path == path:
                return candidate
        found = ", ".join(c.path or "(root)" for c in self.candidates[:8]) or "none"
        raise NotFoundError(
            f"Repository '{self.repo_id}' has no SAE at '{path or '(root)'}'. SAEs found: {found}.",
            param="path",
        )


def list_repo_saes(
    repo_id: str, revision: str, token: str | None, endpoint: str | None, *, with_configs: bool
) -> RepoListing:
    """The SAEs in a repository; `with_configs` also fetches each SAE's cfg.json."""
    info = repo_info(repo_id, revision, token, endpoint)
    files = remote_files(info)
    by_path = {f.path: f for f in files}
    commit = info.sha or revision
    found = find_sae_folders(by_path)
    candidates = []
    for folder, fmt in found:
        members = tuple(
            by_path[p]
            for name in SAE_WEIGHT_FILES[fmt]
            if (p := posixpath.join(folder, name) if folder else name) in by_path
        )
        candidates.append(
            Candidate(
                folder, fmt, spec_from_path(folder, fmt), sum(f.size for f in members), members
            )
        )
    if with_configs and len(candidates) <= _MAX_CONFIGS:
        candidates = _with_configs(repo_id, commit, candidates, by_path, token, endpoint)
    return RepoListing(repo_id, revision, commit, tuple(sorted(candidates, key=lambda c: c.path)))


def _with_configs(
    repo_id: str,
    commit: str,
    candidates: list[Candidate],
    by_path: dict[str, RemoteFile],
    token: str | None,
    endpoint: str | None,
) -> list[Candidate]:
    headers = build_hf_headers(token=token)

    def read(candidate: Candidate) -> Candidate:
        cfg_path = posixpath.join(candidate.path, "cfg.json") if candidate.path else "cfg.json"
        if cfg_path not in by_path:
            return candidate
        url = hf_hub_url(repo_id, cfg_path, revision=commit, endpoint=endpoint)
        try:
            response = client.get(url, headers=headers)
            response.raise_for_status()
            spec = spec_from_config(
                json.loads(response.content), candidate.format, folder_name=candidate.path
            )
        except (httpx.HTTPError, ValueError, MillmError) as exc:
            message = exc.message if isinstance(exc, MillmError) else str(exc)
            return dataclasses.replace(candidate, problem=f"cfg.json unreadable: {message}")
        return dataclasses.replace(candidate, spec=spec)

    with (
        httpx.Client(follow_redirects=True, timeout=30.0) as client,
        ThreadPoolExecutor(_PARALLEL_FETCHES) as pool,
    ):
        return list(pool.map(read, candidates))
