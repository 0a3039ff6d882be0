"""EleutherAI sparsify folders: `cfg.json` + `sae.safetensors`, one folder per hookpoint.

Tensors as `SparseCoder.save_to_disk` writes them: encoder.weight [d_sae, d_in]
(an nn.Linear), encoder.bias [d_sae], W_dec [d_sae, d_in], b_dec [d_in].
cfg.json holds d_in, k, num_latents (0 = d_in * expansion_factor) and flags.

The math is a topk SAE: sparsify subtracts b_dec from the input, takes the top k
of relu(encoder(x)) and decodes with W_dec + b_dec. Two choices differ from
SAELens 6.54's sparsify converter, which follows neither the sparsify source nor
its own TopKSAE shapes: W_dec is kept as stored (SAELens transposes it), and b_dec
is always subtracted from the input (SAELens does so only when normalize_decoder
is false).

A folder named `layers.N` hooks the output of block N (`blocks.N.hook_resid_post`),
`layers.N.mlp` the MLP output, `embed_tokens` the embeddings.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from inference_service.errors import UnsupportedError
from inference_service.sae.architectures import Sae, SaeWeights, dtype_name
from inference_service.sae.formats.saelens import (
    checked_sae,
    corrupted,
    positive_int,
    read_json,
    read_tensors,
    runnable,
    shape_problems,
    stored_dtype,
    tensor_shapes,
)
from inference_service.sae.spec import SaeSpec

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
FILES = (CFG_FILE, WEIGHTS_FILE)

_HOOKPOINTS = (
    (re.compile(r"(?:^|\.)layers[._](\d+)$"), "blocks.{}.hook_resid_post"),
    (re.compile(r"(?:^|\.)layers[._](\d+)\.mlp$"), "blocks.{}.hook_mlp_out"),
)
# sparsify saves bf16 weights unless trained otherwise; read_spec reads the real dtype.
_USUAL_DTYPE = "bfloat16"


def _hook(folder_name: str) -> tuple[str | None, int | None]:
    name = PurePosixPath(folder_name).name
    if name == "embed_tokens":
        return "hook_embed", None
    for pattern, template in _HOOKPOINTS:
        if match := pattern.search(name):
            return template.format(match.group(1)), int(match.group(1))
    return None, None


def spec_from_path(folder_name: str) -> SaeSpec | None:
    hook_name, layer = _hook(folder_name)
    if hook_name is None:
        return None
    return SaeSpec(
        format="sparsify",
        architecture="topk",
        d_in=None,
        d_sae=None,
        hook_name=hook_name,
        layer=layer,
        model_name=None,
        dtype=_USUAL_DTYPE,
        metadata={"hookpoint": PurePosixPath(folder_name).name},
    )


def spec_from_config(cfg: Mapping[str, Any], folder_name: str = "") -> SaeSpec:
    folder = PurePosixPath(folder_name).name
    source = f"{folder}/{CFG_FILE}" if folder else CFG_FILE
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise UnsupportedError(
            f"{source}: sparsify activation {activation!r} is not supported; supported: topk"
        )
    for flag, what in (
        ("transcode", "transcoders"),
        ("skip_connection", "skip connections"),
        ("signed", "signed activations"),
    ):
        if cfg.get(flag):
            raise UnsupportedError(f"{source}: sparsify {what} are not supported")
    d_in = positive_int(cfg, "d_in", source)
    d_sae = cfg.get("num_latents") or d_in * positive_int(
        {"expansion_factor": cfg.get("expansion_factor", 32)}, "expansion_factor", source
    )
    hook_name, layer = _hook(folder_name)
    return SaeSpec(
        format="sparsify",
        architecture="topk",
        d_in=d_in,
        d_sae=positive_int({"num_latents": d_sae}, "num_latents", source),
        hook_name=hook_name,
        layer=layer,
        model_name=None,
        dtype=_USUAL_DTYPE,
        k=positive_int(cfg, "k", source),
        apply_b_dec_to_input=True,
        metadata={"hookpoint": folder, "normalize_decoder": cfg.get("normalize_decoder", True)},
    )


def _expected(spec: SaeSpec) -> dict[str, tuple[int, ...]]:
    assert spec.d_in is not None and spec.d_sae is not None
    return {
        "encoder.weight": (spec.d_sae, spec.d_in),
        "encoder.bias": (spec.d_sae,),
        "W_dec": (spec.d_sae, spec.d_in),
        "b_dec": (spec.d_in,),
    }


def _config_spec(folder: Path) -> SaeSpec:
    cfg_path = folder / CFG_FILE
    spec = spec_from_config(read_json(cfg_path), folder.name)
    if spec.k is not None and spec.d_sae is not None and spec.k > spec.d_sae:
        raise corrupted(cfg_path, f"k={spec.k} is larger than num_latents={spec.d_sae}")
    return spec


def read_spec(folder: Path) -> SaeSpec:
    spec = _config_spec(folder)
    weights_path = folder / WEIGHTS_FILE
    if problems := shape_problems(tensor_shapes(weights_path), _expected(spec)):
        raise corrupted(weights_path, "; ".join(problems))
    return dataclasses.replace(spec, dtype=dtype_name(stored_dtype(weights_path, "encoder.weight")))


def load(folder: Path, device: str | torch.device, dtype: torch.dtype | None) -> Sae:
    spec = _config_spec(folder)
    weights_path = folder / WEIGHTS_FILE
    tensors = read_tensors(weights_path, device)
    if problems := shape_problems({k: tuple(t.shape) for k, t in tensors.items()}, _expected(spec)):
        raise corrupted(weights_path, "; ".join(problems))
    # Like sparsify itself, run in the stored dtype unless asked otherwise.
    to = dtype if dtype is not None else runnable(tensors["encoder.weight"].dtype)
    weights = SaeWeights(
        W_enc=tensors["encoder.weight"].T.to(to),  # [d_in, d_sae]
        b_enc=tensors["encoder.bias"].to(to),
        W_dec=tensors["W_dec"].to(to),
        b_dec=tensors["b_dec"].to(to),
    )
    return checked_sae(dataclasses.replace(spec, dtype=dtype_name(to)), weights, weights_path)
