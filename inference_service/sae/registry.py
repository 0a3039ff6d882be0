"""The SAELens release registry: release + sae_id -> Hub repository + folder.

Read from the `pretrained_saes.yaml` that ships inside the installed sae-lens
package, without importing sae_lens (its import takes seconds). Releases whose
files need a converter miLLM does not read are listed as unsupported, with why.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from inference_service.errors import NotFoundError, UnsupportedError

log = logging.getLogger(__name__)

# sae-lens `conversion_func` -> the miLLM format its files are in.
_READABLE = {
    None: "saelens",
    "sae_lens": "saelens",
    "gemma_2": "gemma_scope",
    "sparsify": "sparsify",
}


@dataclass(frozen=True)
class Release:
    name: str
    repo_id: str
    model: str
    conversion_func: str | None
    sae_paths: dict[str, str] = field(default_factory=dict)  # sae_id -> folder in the repo

    @property
    def supported(self) -> bool:
        return self.conversion_func in _READABLE

    @property
    def unsupported_reason(self) -> str:
        if self.supported:
            return ""
        return (
            f"its files need sae-lens's '{self.conversion_func}' converter, which miLLM does "
            "not read yet; convert with sae-lens and import the folder."
        )


@functools.cache
def releases() -> dict[str, Release]:
    path = _registry_file()
    if path is None:
        log.warning("sae-lens is not installed; the SAE release registry is empty")
        return {}
    raw = yaml.safe_load(path.read_text())
    out: dict[str, Release] = {}
    for name, entry in raw.items():
        out[name] = Release(
            name=name,
            repo_id=entry["repo_id"],
            model=entry.get("model", ""),
            conversion_func=entry.get("conversion_func"),
            sae_paths={str(s["id"]): str(s["path"]) for s in entry.get("saes", [])},
        )
    return out


def list_releases(model_filter: str = "") -> list[Release]:
    wanted = model_filter.strip().lower()
    return [r for name, r in sorted(releases().items()) if not wanted or wanted in r.model.lower()]


def resolve(release: str, sae_id: str) -> tuple[Release, str]:
    """The release and the SAE's folder inside its repository."""
    found = releases().get(release)
    if found is None:
        raise NotFoundError(
            f"'{release}' is not a SAELens release; list them with SaeService.ListSaeReleases.",
            param="release",
        )
    if sae_id not in found.sae_paths:
        some = ", ".join(sorted(found.sae_paths)[:5])
        raise NotFoundError(
            f"Release '{release}' has no SAE '{sae_id}'; it has {len(found.sae_paths)}, "
            f"such as {some}.",
            param="sae_id",
        )
    if not found.supported:
        raise UnsupportedError(
            f"Release '{release}' cannot be downloaded: {found.unsupported_reason}",
            param="release",
        )
    return found, found.sae_paths[sae_id]


def _registry_file() -> Path | None:
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"
    return path if path.is_file() else None
