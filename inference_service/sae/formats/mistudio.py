"""miStudio checkpoints: `checkpoint.safetensors` (+ `config.json`).

miStudio (the training side of this project family) saves its SAE modules' state
dicts with a `model.` prefix, in PyTorch's nn.Linear orientation, which is the
transpose of SAELens':

    model.encoder.weight [d_sae, d_in]  = W_enc.T
    model.encoder.bias   [d_sae]        = b_enc
    model.decoder.weight [d_in, d_sae]  = W_dec.T   (absent when tied: W_dec = encoder.weight)
    model.decoder.bias   [d_in]         optional; miStudio adds it to decoder_bias
    model.decoder_bias   [d_in]         = b_dec
    model.threshold      [d_sae]        jumprelu (written here; miStudio's own JumpReLU
                                        module stores model.activation.log_threshold)

miStudio's JumpReLU module instead stores model.W_enc [d_sae, d_in], model.b_enc,
model.W_dec [d_in, d_sae], model.b_dec and model.activation.log_threshold; both are read.

miStudio keeps hyperparameters in its database, so a bare checkpoint says nothing
about hook, k or normalisation. `save` therefore writes a `config.json` beside it:

    {"format": "mistudio", "architecture": "topk", "d_in": 64, "d_sae": 256, "k": 8,
     "rescale_acts_by_decoder_norm": false, "apply_b_dec_to_input": false,
     "normalize_activations": "none", "dtype": "float32",
     "hook_name": "blocks.3.hook_resid_post", "layer": 3, "model_name": "...", "metadata": {}}

Without one: standard (jumprelu when a threshold is stored), no b_dec subtraction
(miStudio's encoder never subtracts it), no normalisation, and the layer from a
`layer_N` folder (miStudio's multi-layer layout) read as blocks.N.hook_resid_post.
miStudio hyperparameter names (hidden_dim, latent_dim, architecture_type,
top_k_sparsity in percent) are accepted in config.json too.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from inference_service.errors import CorruptedFileError, UnsupportedError
from inference_service.sae.architectures import (
    TORCH_DTYPES,
    Sae,
    SaeWeights,
    dtype_name,
    get_architecture,
)
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
from inference_service.sae.spec import (
    SaeSpec,
    check_normalization,
    layer_from_hook,
    normalize_dtype,
)

CHECKPOINT_FILE = "checkpoint.safetensors"
CONFIG_FILE = "config.json"
FILES = (CHECKPOINT_FILE, CONFIG_FILE)
PREFIX = "model."
SUPPORTED_ARCHITECTURES = ("standard", "jumprelu", "topk")

_LAYER_FOLDER = re.compile(r"(?:^|/)layer_(\d+)$")
_ENCODER_KEYS = (PREFIX + "encoder.weight", PREFIX + "W_enc")


def is_checkpoint(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    return any(key in shapes for key in _ENCODER_KEYS)


def find_checkpoint(folder: Path) -> Path | None:
    """checkpoint.safetensors, else the one .safetensors file whose tensors are miStudio's."""
    named = folder / CHECKPOINT_FILE
    if named.is_file():
        return named
    found = []
    for path in sorted(folder.glob("*.safetensors")):
        try:
            if is_checkpoint(tensor_shapes(path)):
                found.append(path)
        except CorruptedFileError:
            continue  # an unreadable file is simply not a checkpoint
    return found[0] if len(found) == 1 else None


def _first(cfg: Mapping[str, Any], *keys: str) -> Any:
    return next((cfg[key] for key in keys if cfg.get(key) is not None), None)


def spec_from_config(cfg: Mapping[str, Any], folder_name: str = "") -> SaeSpec:
    folder = PurePosixPath(folder_name).name
    source = f"{folder}/{CONFIG_FILE}" if folder else CONFIG_FILE
    architecture = str(_first(cfg, "architecture", "architecture_type") or "standard")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedError(
            f"{source}: architecture {architecture!r} is not supported in miStudio "
            f"checkpoints; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    d_in = positive_int({"d_in": _first(cfg, "d_in", "hidden_dim", "d_model")}, "d_in", source)
    d_sae = positive_int({"d_sae": _first(cfg, "d_sae", "latent_dim")}, "d_sae", source)
    k = None
    if cfg.get("k") is not None:
        k = positive_int(cfg, "k", source)
    elif cfg.get("top_k_sparsity") is not None:
        # miStudio's own rule: a percentage of the latents, at least one.
        k = max(1, int(float(cfg["top_k_sparsity"]) / 100 * d_sae))
    if k is not None and architecture == "standard":
        architecture = "topk"  # miStudio trains topk as its standard SAE with a k
    hook_name = cfg.get("hook_name") or cfg.get("hook_point")
    layer = layer_from_hook(hook_name)
    if layer is None and isinstance(cfg.get("layer"), int):
        layer = cfg["layer"]
    if hook_name is None and layer is not None:
        hook_name = f"blocks.{layer}.hook_resid_post"
    metadata = cfg.get("metadata")
    topk = get_architecture(architecture).keeps_top_k
    return SaeSpec(
        format="mistudio",
        architecture=architecture,
        d_in=d_in,
        d_sae=d_sae,
        hook_name=hook_name,
        layer=layer,
        model_name=cfg.get("model_name"),
        dtype=normalize_dtype(cfg.get("dtype", "float32")),
        k=k if topk else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)),
        normalize_activations=check_normalization(cfg.get("normalize_activations", "none")),
        rescale_acts_by_decoder_norm=topk and bool(cfg.get("rescale_acts_by_decoder_norm")),
        metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
    )


def _bare_spec(folder: Path, shapes: Mapping[str, tuple[int, ...]], path: Path) -> SaeSpec:
    """What a checkpoint without config.json says."""
    if PREFIX + "encoder.weight" in shapes:
        d_sae, d_in = shapes[PREFIX + "encoder.weight"]
    elif PREFIX + "W_enc" in shapes:
        d_sae, d_in = shapes[PREFIX + "W_enc"]
    else:
        raise corrupted(path, "holds neither model.encoder.weight nor model.W_enc")
    jumprelu = PREFIX + "threshold" in shapes or PREFIX + "activation.log_threshold" in shapes
    match = _LAYER_FOLDER.search(folder.as_posix())
    layer = int(match.group(1)) if match else None
    return SaeSpec(
        format="mistudio",
        architecture="jumprelu" if jumprelu else "standard",
        d_in=d_in,
        d_sae=d_sae,
        hook_name=None if layer is None else f"blocks.{layer}.hook_resid_post",
        layer=layer,
        model_name=None,
        dtype=dtype_name(stored_dtype(path, next(k for k in _ENCODER_KEYS if k in shapes))),
        apply_b_dec_to_input=False,
    )


def _layout(spec: SaeSpec, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape this checkpoint must have, in whichever of the two layouts it uses."""
    assert spec.d_in is not None and spec.d_sae is not None
    d_in, d_sae = spec.d_in, spec.d_sae
    expected: dict[str, tuple[int, ...]]
    optional: dict[str, tuple[int, ...]]
    if PREFIX + "W_enc" in shapes:
        expected = {"W_enc": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
        optional = {"W_dec": (d_in, d_sae)}
    else:
        expected = {
            "encoder.weight": (d_sae, d_in),
            "encoder.bias": (d_sae,),
            "decoder_bias": (d_in,),
        }
        optional = {"decoder.weight": (d_in, d_sae), "decoder.bias": (d_in,)}
    if "threshold" in get_architecture(spec.architecture).extra_tensors:
        logged = PREFIX + "activation.log_threshold" in shapes
        expected["activation.log_threshold" if logged else "threshold"] = (d_sae,)
    for name, shape in optional.items():
        if PREFIX + name in shapes:
            expected[name] = shape
    return {PREFIX + name: shape for name, shape in expected.items()}


def _spec(folder: Path, path: Path) -> tuple[SaeSpec, dict[str, tuple[int, ...]]]:
    shapes = tensor_shapes(path)
    config_path = folder / CONFIG_FILE
    if config_path.exists():
        spec = spec_from_config(read_json(config_path), folder.name)
    else:
        spec = _bare_spec(folder, shapes, path)
    return spec, shapes


def _checkpoint(folder: Path) -> Path:
    path = find_checkpoint(folder)
    if path is None:
        raise corrupted(folder / CHECKPOINT_FILE, "is missing")
    return path


def read_spec(folder: Path) -> SaeSpec:
    path = _checkpoint(folder)
    spec, shapes = _spec(folder, path)
    if problems := shape_problems(shapes, _layout(spec, shapes)):
        raise corrupted(path, "; ".join(problems))
    return spec


def _weights(tensors: Mapping[str, Tensor]) -> SaeWeights:
    t = {key.removeprefix(PREFIX): value for key, value in tensors.items()}
    threshold = t.get("threshold")
    if "activation.log_threshold" in t:
        threshold = t["activation.log_threshold"].exp()
    if "W_enc" in t:  # miStudio's JumpReLU module
        w_dec = t["W_dec"].T if "W_dec" in t else t["W_enc"]
        return SaeWeights(t["W_enc"].T, t["b_enc"], w_dec, t["b_dec"], threshold)
    w_dec = t["decoder.weight"].T if "decoder.weight" in t else t["encoder.weight"]
    b_dec = t["decoder_bias"]
    if "decoder.bias" in t:
        b_dec = b_dec + t["decoder.bias"]  # miStudio's decoder adds both
    return SaeWeights(t["encoder.weight"].T, t["encoder.bias"], w_dec, b_dec, threshold)


def load(folder: Path, device: str | torch.device, dtype: torch.dtype | None) -> Sae:
    path = _checkpoint(folder)
    spec, shapes = _spec(folder, path)
    if problems := shape_problems(shapes, _layout(spec, shapes)):
        raise corrupted(path, "; ".join(problems))
    tensors = read_tensors(path, device)
    to = dtype if dtype is not None else runnable(TORCH_DTYPES[spec.dtype])
    weights = _weights(tensors).to(device, to)
    return checked_sae(dataclasses.replace(spec, dtype=dtype_name(to)), weights, path)


def save(sae: Sae, folder: Path) -> list[Path]:
    spec = sae.spec
    if spec.architecture not in SUPPORTED_ARCHITECTURES:
        get_architecture(spec.architecture)  # unknown names get the registry's message
        raise UnsupportedError(
            f"{spec.architecture} SAEs cannot be saved as miStudio checkpoints; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    w = sae.weights
    tensors = {
        "encoder.weight": w.W_enc.T,  # [d_sae, d_in]
        "encoder.bias": w.b_enc,
        "decoder.weight": w.W_dec.T,  # [d_in, d_sae]
        "decoder_bias": w.b_dec,
    }
    if w.threshold is not None:
        tensors["threshold"] = w.threshold
    config = {
        "format": "mistudio",
        "architecture": spec.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "k": spec.k,
        "rescale_acts_by_decoder_norm": spec.rescale_acts_by_decoder_norm,
        "apply_b_dec_to_input": spec.apply_b_dec_to_input,
        "normalize_activations": spec.normalize_activations,
        "dtype": dtype_name(w.W_enc.dtype),
        "hook_name": spec.hook_name,
        "layer": spec.layer,
        "model_name": spec.model_name,
        "metadata": dict(spec.metadata),
    }
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint_path = folder / CHECKPOINT_FILE
    save_file(
        {PREFIX + key: t.detach().cpu().contiguous() for key, t in tensors.items()},
        str(checkpoint_path),
    )
    config_path = folder / CONFIG_FILE
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return [config_path, checkpoint_path]
