"""Gemma Scope folders: JumpReLU SAEs published by Google DeepMind.

Gemma Scope (Gemma 2) stores `params.npz` with W_enc [d_in, d_sae], W_dec [d_sae, d_in],
b_enc [d_sae], b_dec [d_in] and threshold [d_sae], in folders such as
`layer_12/width_16k/average_l0_82`. Gemma Scope 2 (Gemma 3) stores the same tensors,
named w_enc/w_dec/..., in `params.safetensors` next to a `config.json` that names
the Hugging Face module it was trained on (`hf_hook_point_in`).

No Gemma Scope file records the TransformerLens hook. It comes from config.json
when there is one, else from the path: `layer_N` means `blocks.N.hook_resid_post`.
Gemma Scope 1 keeps residual, MLP and attention SAEs in separate repos with the
same folder names; a local folder whose path holds the repo name
(".../google--gemma-scope-2b-pt-mlp/...") gets the site and model from it, and
otherwise `metadata["hook_from_path"]` marks a hook that only assumes "res".

As SAELens' gemma_2 loader does, inputs are not shifted by b_dec
(`apply_b_dec_to_input` false) and the embedding SAEs are rescaled to take the
embeddings after Gemma's sqrt(d_model) multiplier.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch import Tensor

from inference_service.errors import UnsupportedError
from inference_service.sae.architectures import Sae, SaeWeights, dtype_name, expected_shapes
from inference_service.sae.formats.saelens import (
    checked_sae,
    corrupted,
    read_json,
    read_tensors,
    shape_problems,
    target_dtype,
    tensor_shapes,
)
from inference_service.sae.spec import SaeSpec, layer_from_hook

NPZ_FILE = "params.npz"
SAFETENSORS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"  # Gemma Scope 2 only
FILES = (NPZ_FILE, SAFETENSORS_FILE, CONFIG_FILE)

_LAYER = re.compile(r"(?:^|/)layer_(\d+)")
# Widths are powers of two named in rounded thousands: width_16k = 16384, width_1m = 2**20.
_WIDTH = re.compile(r"width_(\d+)([km])\b")
_AVERAGE_L0 = re.compile(r"average_l0_(\d+)")
# Gemma Scope 2 folder kinds -> TransformerLens hook of block N.
_SITE_HOOKS = {
    "resid_post": "blocks.{}.hook_resid_post",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "attn_out": "blocks.{}.attn.hook_z",
}
# Gemma Scope 1 repo names ("google/gemma-scope-2b-pt-res", kept in the local cache path)
# say which site a repo's SAEs read.
_REPO = re.compile(r"gemma-scope-(2b|9b|27b)-(pt|it)-(res|mlp|att)\b")
_REPO_SITE_HOOKS = {
    "res": "blocks.{}.hook_resid_post",
    "mlp": "blocks.{}.hook_mlp_out",
    "att": "blocks.{}.attn.hook_z",
}
# config.json `hf_hook_point_in` -> TransformerLens hook (as SAELens' gemma_3 loader maps them).
_HF_HOOKS = (
    (re.compile(r"^model\.layers\.(\d+)\.output$"), "blocks.{}.hook_resid_post"),
    (
        re.compile(r"^model\.layers\.(\d+)\.post_feedforward_layernorm\.output$"),
        "blocks.{}.hook_mlp_out",
    ),
    (re.compile(r"^model\.layers\.(\d+)\.self_attn\.o_proj\.input$"), "blocks.{}.attn.hook_z"),
)


def _width(path: str) -> int | None:
    match = _WIDTH.search(path)
    if not match:
        return None
    approximate = int(match.group(1)) * (1000 if match.group(2) == "k" else 1_000_000)
    return 1 << math.ceil(math.log2(approximate))


def _is_transcoder(parts: list[str]) -> bool:
    return any("transcoder" in part or part.startswith("clt") for part in parts)


def spec_from_path(folder_name: str) -> SaeSpec | None:
    """What a Gemma Scope folder path says: layer, width and (assumed) hook."""
    path = PurePosixPath(folder_name).as_posix()
    parts = path.split("/")
    if _is_transcoder(parts):
        return None
    metadata: dict[str, Any] = {"hook_from_path": True}
    if l0 := _AVERAGE_L0.search(path):
        metadata["average_l0"] = int(l0.group(1))
    if "embedding" in parts:
        hook_name, layer = "hook_embed", None
    elif match := _LAYER.search(path):
        layer = int(match.group(1))
        site = next((part for part in parts if part in _SITE_HOOKS), "resid_post")
        hook_name = _SITE_HOOKS[site].format(layer)
    else:
        return None
    return SaeSpec(
        format="gemma_scope",
        architecture="jumprelu",
        d_in=None,
        d_sae=_width(path),
        hook_name=hook_name,
        layer=layer,
        model_name=None,
        apply_b_dec_to_input=False,
        metadata=metadata,
    )


def spec_from_config(cfg: Mapping[str, Any], folder_name: str = "") -> SaeSpec:
    """SaeSpec of a Gemma Scope 2 config.json (the path fills what it leaves out)."""
    folder = PurePosixPath(folder_name).name
    source = f"{folder}/{CONFIG_FILE}" if folder else CONFIG_FILE
    architecture = cfg.get("architecture", "jump_relu")
    if architecture not in ("jump_relu", "jumprelu"):
        raise UnsupportedError(
            f"{source}: Gemma Scope architecture {architecture!r} is not supported; "
            "supported: jump_relu"
        )
    if cfg.get("hf_hook_point_out") or _is_transcoder(folder_name.split("/")):
        raise UnsupportedError(f"{source}: Gemma Scope transcoders are not supported")
    base = spec_from_path(folder_name) or _unknown_site()
    metadata = dict(base.metadata)
    hook_name, layer = base.hook_name, base.layer
    hf_hook = cfg.get("hf_hook_point_in")
    if isinstance(hf_hook, str):
        metadata["hf_hook_name"] = hf_hook
        for pattern, template in _HF_HOOKS:
            if match := pattern.match(hf_hook):
                hook_name = template.format(match.group(1))
                layer = layer_from_hook(hook_name)
                metadata.pop("hook_from_path", None)
                break
    model_name = cfg.get("model_name")
    return dataclasses.replace(
        base,
        hook_name=hook_name,
        layer=layer,
        model_name=model_name if isinstance(model_name, str) else None,
        metadata=metadata,
    )


def _unknown_site() -> SaeSpec:
    return SaeSpec(
        format="gemma_scope",
        architecture="jumprelu",
        d_in=None,
        d_sae=None,
        hook_name=None,
        layer=None,
        model_name=None,
        apply_b_dec_to_input=False,
    )


def _with_repo_hint(spec: SaeSpec, path: str) -> SaeSpec:
    """Model and site from a Gemma Scope 1 repo name in the local path, as SAELens reads them."""
    match = _REPO.search(path)
    if match is None or spec.layer is None or spec.hook_name == "hook_embed":
        return spec
    size, variant, site = match.groups()
    metadata = {k: v for k, v in spec.metadata.items() if k != "hook_from_path"}
    if site == "att":
        metadata["reshape_activations"] = "hook_z"
    model = f"google/gemma-2-{size}" + ("-it" if variant == "it" else "")
    hook = _REPO_SITE_HOOKS[site].format(spec.layer)
    return dataclasses.replace(spec, hook_name=hook, model_name=model, metadata=metadata)


def _spec(folder: Path) -> SaeSpec:
    config_path = folder / CONFIG_FILE
    if config_path.exists():
        return spec_from_config(read_json(config_path), folder.as_posix())
    # Copied out of its repo layout the hook is unknown; the SAE still runs.
    spec = spec_from_path(folder.as_posix()) or _unknown_site()
    return _with_repo_hint(spec, folder.as_posix())


def _canonical(name: str) -> str:
    # Gemma Scope 2 spells the weights w_enc / w_dec.
    return "W_" + name[2:] if name.startswith("w_") else name


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array name -> shape from the .npy headers inside an .npz; reads no array data."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, _ = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, _ = np.lib.format.read_array_header_2_0(f)
                    else:
                        raise ValueError(f"npy version {version}")
                shapes[member.removesuffix(".npy")] = tuple(shape)
    except FileNotFoundError:
        raise corrupted(path, "is missing") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise corrupted(path, "is not a readable .npz archive (truncated?)") from e
    return shapes


def _npz_tensors(path: Path, device: str | torch.device) -> dict[str, Tensor]:
    tensors = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                with archive.open(member) as f:
                    array = np.lib.format.read_array(f, allow_pickle=False)
                tensors[member.removesuffix(".npy")] = torch.from_numpy(array).to(device)
    except FileNotFoundError:
        raise corrupted(path, "is missing") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise corrupted(path, "is not a readable .npz archive (truncated?)") from e
    return tensors


def _weights_path(folder: Path) -> Path:
    npz = folder / NPZ_FILE
    return npz if npz.exists() else folder / SAFETENSORS_FILE


def _with_dims(spec: SaeSpec, shapes: Mapping[str, tuple[int, ...]], path: Path) -> SaeSpec:
    """`spec` with d_in/d_sae from W_enc, after checking every tensor against them."""
    w_enc = shapes.get("W_enc")
    if w_enc is None or len(w_enc) != 2:
        raise corrupted(path, f"tensor W_enc is missing or not 2-D (found {sorted(shapes)})")
    d_in, d_sae = w_enc
    if problems := shape_problems(shapes, expected_shapes("jumprelu", d_in, d_sae)):
        raise corrupted(path, "; ".join(problems))
    if spec.d_sae is not None and spec.d_sae != d_sae:
        # The folder's width_* label only approximates; the tensors are authoritative.
        spec = dataclasses.replace(spec, metadata={**spec.metadata, "width_label": spec.d_sae})
    return dataclasses.replace(spec, d_in=d_in, d_sae=d_sae)


def read_spec(folder: Path) -> SaeSpec:
    path = _weights_path(folder)
    raw = _npz_shapes(path) if path.suffix == ".npz" else tensor_shapes(path)
    shapes = {_canonical(name): shape for name, shape in raw.items()}
    return _with_dims(_spec(folder), shapes, path)


def load(folder: Path, device: str | torch.device, dtype: torch.dtype | None) -> Sae:
    path = _weights_path(folder)
    raw = _npz_tensors(path, device) if path.suffix == ".npz" else read_tensors(path, device)
    tensors = {_canonical(name): t for name, t in raw.items()}
    spec = _with_dims(_spec(folder), {k: tuple(t.shape) for k, t in tensors.items()}, path)
    to = target_dtype(spec, dtype)
    weights = SaeWeights(**{name: t.to(to) for name, t in tensors.items()})
    if spec.hook_name == "hook_embed" and path.suffix == ".npz":
        # Trained on embeddings before Gemma's sqrt(d_model) multiplier; SAELens rescales
        # so the SAE reads the multiplied embeddings that the model actually passes on.
        scale = math.sqrt(weights.W_enc.shape[0])
        weights.W_enc = weights.W_enc / scale
        weights.W_dec = weights.W_dec * scale
    return checked_sae(dataclasses.replace(spec, dtype=dtype_name(to)), weights, path)
