"""SAE files on disk and in Hub repos: find them, tell their format, read and write them.

One module per format (saelens, gemma_scope, sparsify, mistudio); this module picks
the right one. `read_spec` reads configs and tensor headers only, `load_sae` reads
the tensors and checks every shape against the spec. Paths alone cannot tell a
SAELens v6 folder from a pre-6.0 one, so `find_sae_folders` reports both as
"saelens" and the config decides (`spec_from_config`, `detect_format`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import torch

from inference_service.errors import UnsupportedError
from inference_service.sae.architectures import Sae
from inference_service.sae.formats import gemma_scope, mistudio, saelens, sparsify
from inference_service.sae.spec import SaeFormat, SaeSpec

__all__ = [
    "SAE_WEIGHT_FILES",
    "detect_format",
    "find_sae_folders",
    "load_sae",
    "read_spec",
    "save_sae",
    "spec_from_config",
    "spec_from_path",
]

SAE_WEIGHT_FILES: dict[SaeFormat, tuple[str, ...]] = {
    "saelens": saelens.FILES,
    "saelens_legacy": saelens.FILES,
    "gemma_scope": gemma_scope.FILES,
    "sparsify": sparsify.FILES,
    "mistudio": mistudio.FILES,
}

_LOOKED_FOR = (
    "cfg.json + sae_weights.safetensors (SAELens), params.npz or params.safetensors "
    "(Gemma Scope), cfg.json + sae.safetensors (sparsify), checkpoint.safetensors or "
    "another .safetensors file with model.* tensors (miStudio)"
)
_MODULES = {
    "saelens": saelens,
    "saelens_legacy": saelens,
    "gemma_scope": gemma_scope,
    "sparsify": sparsify,
    "mistudio": mistudio,
}


def _format_from_names(names: set[str]) -> SaeFormat | None:
    if {saelens.CFG_FILE, saelens.WEIGHTS_FILE} <= names:
        return "saelens"
    if gemma_scope.NPZ_FILE in names or gemma_scope.SAFETENSORS_FILE in names:
        return "gemma_scope"
    if {sparsify.CFG_FILE, sparsify.WEIGHTS_FILE} <= names:
        return "sparsify"
    if mistudio.CHECKPOINT_FILE in names:
        return "mistudio"
    return None


def _natural_key(text: str) -> list[Any]:
    # "layers.2" before "layers.10"
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def find_sae_folders(paths: Iterable[str]) -> list[tuple[str, SaeFormat]]:
    """(folder, format) for each SAE among a repo's file paths; folder "" is the repo root."""
    names_by_folder: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        pure = PurePosixPath(path.strip("/"))
        folder = pure.parent.as_posix()
        names_by_folder["" if folder == "." else folder].add(pure.name)
    found = [
        (folder, fmt)
        for folder, names in names_by_folder.items()
        if (fmt := _format_from_names(names)) is not None
    ]
    return sorted(found, key=lambda item: _natural_key(item[0]))


def detect_format(folder: Path) -> SaeFormat:
    """The format of the SAE in `folder`, from its files (and tensor names if need be)."""
    names = {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
    fmt = _format_from_names(names)
    if fmt == "saelens":
        cfg = saelens.read_json(folder / saelens.CFG_FILE)
        return "saelens" if saelens.is_v6(cfg) else "saelens_legacy"
    if fmt is not None:
        return fmt
    if names and mistudio.find_checkpoint(folder) is not None:
        return "mistudio"
    # What is missing, never what is there: the folder may be any on the server
    # (an import names one), and answers do not show the server's files or paths.
    what = "is empty" if not names else "has none of the files of a known format"
    raise UnsupportedError(f"No SAE recognised: the folder {what}. Looked for {_LOOKED_FOR}.")


def spec_from_config(cfg: Mapping[str, Any], fmt: SaeFormat, *, folder_name: str = "") -> SaeSpec:
    """SaeSpec from a parsed config file alone, e.g. for a preview before downloading.

    `cfg` is the folder's cfg.json (SAELens, sparsify) or config.json (Gemma Scope 2,
    miStudio); `folder_name` is the SAE's folder in its repo, which sparsify and
    Gemma Scope need for the hook.
    """
    if fmt in ("saelens", "saelens_legacy"):
        folder = PurePosixPath(folder_name).name
        source = f"{folder}/{saelens.CFG_FILE}" if folder else saelens.CFG_FILE
        return saelens.spec_from_config(cfg, folder_name=folder_name, source=source)
    if fmt == "sparsify":
        return sparsify.spec_from_config(cfg, folder_name)
    if fmt == "gemma_scope":
        return gemma_scope.spec_from_config(cfg, folder_name)
    if fmt == "mistudio":
        return mistudio.spec_from_config(cfg, folder_name)
    raise UnsupportedError(f"SAE format {fmt!r} is not supported; supported: {', '.join(_MODULES)}")


def spec_from_path(folder_name: str, fmt: SaeFormat) -> SaeSpec | None:
    """What a folder path alone says (Gemma Scope and sparsify name hook and width); else None."""
    if fmt == "gemma_scope":
        return gemma_scope.spec_from_path(folder_name)
    if fmt == "sparsify":
        return sparsify.spec_from_path(folder_name)
    return None


def read_spec(folder: Path) -> SaeSpec:
    """The spec of the SAE in `folder` from its configs and tensor headers; reads no tensor data."""
    spec: SaeSpec = _MODULES[detect_format(folder)].read_spec(folder)
    return spec


def load_sae(
    folder: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Sae:
    """The SAE in `folder`, every tensor checked against its spec.

    `dtype` None keeps the dtype the config names (the stored one for sparsify and
    bare miStudio checkpoints), as SAELens and sparsify do.
    """
    sae: Sae = _MODULES[detect_format(folder)].load(folder, device, dtype)
    return sae


def save_sae(sae: Sae, folder: Path, layout: Literal["saelens", "mistudio"]) -> list[Path]:
    """Writes `sae` into `folder` in `layout`; returns the files written."""
    if layout == "saelens":
        return saelens.save(sae, folder)
    if layout == "mistudio":
        return mistudio.save(sae, folder)
    raise UnsupportedError(f"SAE layout {layout!r} cannot be written; supported: saelens, mistudio")
