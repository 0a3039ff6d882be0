"""SAELens folders: `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`).

Both the v6 layout (architecture fields at the top, LLM facts under "metadata") and
the flat pre-6.0 layout are read; pre-6.0 configs are upgraded the way SAELens'
`handle_pre_6_0_config` does. Saving always writes v6.

Legacy `scaling_factor` tensors (SAELens < 6 multiplied feature activations by them
before decoding) are dropped when all ones and otherwise folded into the rows of
W_dec, which gives the same reconstruction; a non-trivial one whose cfg.json says
`finetuning_scaling_factor: false` is rejected, as SAELens does.

This module also holds the file readers every format shares: JSON, safetensors
headers and tensors, and the CorruptedFileError they raise.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from inference_service.errors import CorruptedFileError, UnsupportedError
from inference_service.sae.architectures import (
    TORCH_DTYPES,
    Sae,
    SaeWeights,
    dtype_name,
    expected_shapes,
    get_architecture,
    weight_problems,
)
from inference_service.sae.spec import (
    SaeSpec,
    check_normalization,
    layer_from_hook,
    normalize_dtype,
)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
FILES = (CFG_FILE, WEIGHTS_FILE, SPARSITY_FILE)

# Written as metadata.sae_lens_version: SAELens treats configs without a version
# of at least 6 as pre-6.0 and rewrites them, which would misread a v6 layout.
WRITTEN_SAE_LENS_VERSION = "6.0.0"

# Top-level cfg.json fields of SAELens v6 SAE configs; the rest is metadata.
_SAE_FIELDS = frozenset(
    {
        "d_in",
        "d_sae",
        "dtype",
        "device",
        "apply_b_dec_to_input",
        "normalize_activations",
        "reshape_activations",
        "architecture",
        "k",
        "rescale_acts_by_decoder_norm",
    }
)
# Flat pre-6.0 keys SAELens moves into metadata (plus hook_layer, kept as a layer
# fallback); the other flat keys were training settings.
_PRE_V6_METADATA = frozenset(
    {
        "model_name",
        "hook_name",
        "hook_layer",
        "hook_head_index",
        "model_class_name",
        "model_from_pretrained_kwargs",
        "prepend_bos",
        "exclude_special_tokens",
        "neuronpedia_id",
        "context_size",
        "seqpos_slice",
        "dataset_path",
        "sae_lens_version",
        "sae_lens_training_version",
    }
)
_PRE_V6_RENAMES = {
    "hook_point": "hook_name",
    "hook_point_layer": "hook_layer",
    "hook_point_head_index": "hook_head_index",
    "activation_fn_str": "activation_fn",
}
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_HOOK_FOLDER = re.compile(r"^(blocks\.\d+\.[A-Za-z0-9_.]+|hook_embed)$")


# -- shared file readers ----------------------------------------------------------------


def label(path: Path) -> str:
    """How messages name a file: its SAE folder and name."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def corrupted(source: Path | str, problem: str) -> CorruptedFileError:
    name = label(source) if isinstance(source, Path) else source
    return CorruptedFileError(f"{name}: {problem}; re-download or re-import the SAE")


def read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise corrupted(path, "is missing") from None
    except json.JSONDecodeError as e:
        raise corrupted(path, f"is not valid JSON ({e.msg} at line {e.lineno})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise corrupted(path, "cannot be read as UTF-8 JSON") from e
    if not isinstance(data, dict):
        raise corrupted(path, "does not hold a JSON object")
    return data


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header; reads no tensor data."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise corrupted(path, "is missing") from None
    except (SafetensorError, OSError) as e:
        raise corrupted(path, "is not a readable safetensors file (truncated?)") from e


def stored_dtype(path: Path, key: str) -> torch.dtype:
    """The dtype tensor `key` is stored in (header only); float32 for ones SAEs do not run in."""
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = f.get_slice(key).get_dtype()
    except (SafetensorError, OSError) as e:
        raise corrupted(path, "is not a readable safetensors file (truncated?)") from e
    return _SAFETENSORS_DTYPES.get(stored, torch.float32)


def runnable(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in TORCH_DTYPES.values() else torch.float32


def read_tensors(path: Path, device: str | torch.device) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise corrupted(path, "is missing") from None
    except (SafetensorError, OSError) as e:
        raise corrupted(path, "is not a readable safetensors file (truncated?)") from e


def shape_problems(
    found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]
) -> list[str]:
    """Missing, unexpected and mis-shaped tensors, by their names in the file."""
    problems = [f"tensor {key} is missing" for key in expected if key not in found]
    problems += [f"unexpected tensor {key}" for key in found if key not in expected]
    problems += [
        f"tensor {key} has shape {list(shape)}, expected {list(expected[key])}"
        for key, shape in found.items()
        if key in expected and tuple(shape) != tuple(expected[key])
    ]
    return problems


def checked_sae(
    spec: SaeSpec, weights: SaeWeights, source: Path, log_sparsity: Tensor | None = None
) -> Sae:
    """An Sae, or CorruptedFileError naming `source` when the tensors do not fit `spec`."""
    problems = weight_problems(spec, weights)
    if problems:
        raise corrupted(source, "; ".join(problems))
    return Sae(spec, weights, log_sparsity)


def positive_int(cfg: Mapping[str, Any], key: str, source: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise corrupted(source, f"{key} must be a positive integer, got {value!r}")
    return value


def target_dtype(spec: SaeSpec, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype to load in: the caller's, else the config's (SAELens casts to it too)."""
    return dtype if dtype is not None else TORCH_DTYPES[spec.dtype]


# -- configs ------------------------------------------------------------------------------


def is_v6(cfg: Mapping[str, Any]) -> bool:
    metadata = cfg.get("metadata")
    version = cfg.get("sae_lens_version") or (
        metadata.get("sae_lens_version") if isinstance(metadata, Mapping) else None
    )
    match = re.match(r"\s*(\d+)", str(version)) if version else None
    return match is not None and int(match.group(1)) >= 6


def _upgrade_pre_v6(cfg: Mapping[str, Any], source: str) -> dict[str, Any]:
    """A flat pre-6.0 cfg.json in the v6 shape (SAELens' renames and defaults)."""
    flat = {_PRE_V6_RENAMES.get(key, key): value for key, value in cfg.items()}
    nested = flat.pop("metadata", None)
    out = {key: value for key, value in flat.items() if key in _SAE_FIELDS}
    out.setdefault("architecture", "standard")
    out.setdefault("apply_b_dec_to_input", True)

    activation = flat.get("activation_fn") or "relu"
    if activation == "topk":
        k = (flat.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise corrupted(source, "activation_fn is topk but activation_fn_kwargs.k is missing")
        out["architecture"], out["k"] = "topk", k
    elif activation != "relu":
        raise UnsupportedError(
            f"{source}: activation_fn {activation!r} is not supported; supported: relu, topk"
        )

    # Old configs stored a boolean: true meant Anthropic's expected-average scaling.
    normalize = out.get("normalize_activations")
    if isinstance(normalize, bool):
        out["normalize_activations"] = "expected_average_only_in" if normalize else "none"
    elif normalize is None:
        out["normalize_activations"] = "none"

    metadata = {key: value for key, value in flat.items() if key in _PRE_V6_METADATA}
    if isinstance(nested, Mapping):
        metadata.update(nested)
    metadata.setdefault("prepend_bos", True)
    out.setdefault(
        "reshape_activations", "hook_z" if "hook_z" in str(metadata.get("hook_name")) else "none"
    )
    out["metadata"] = metadata
    return out


def spec_from_config(
    cfg: Mapping[str, Any], *, folder_name: str = "", source: str = CFG_FILE
) -> SaeSpec:
    """SaeSpec of a SAELens cfg.json, v6 or pre-6.0 (the version inside decides)."""
    v6 = is_v6(cfg)
    sae_cfg: Mapping[str, Any] = cfg if v6 else _upgrade_pre_v6(cfg, source)
    raw_metadata = sae_cfg.get("metadata")
    metadata = dict(raw_metadata) if isinstance(raw_metadata, Mapping) else {}

    architecture = get_architecture(str(sae_cfg.get("architecture", "standard")))
    hook_name = metadata.pop("hook_name", None)
    if not hook_name and _HOOK_FOLDER.match(folder_name.rsplit("/", 1)[-1]):
        # SAELens releases name each SAE's folder after its hook.
        hook_name = folder_name.rsplit("/", 1)[-1]
    layer = layer_from_hook(hook_name)
    if layer is None and isinstance(metadata.get("hook_layer"), int):
        layer = metadata["hook_layer"]
    reshape = sae_cfg.get("reshape_activations") or "none"
    if reshape != "none":
        metadata["reshape_activations"] = reshape

    topk = architecture.keeps_top_k
    return SaeSpec(
        format="saelens" if v6 else "saelens_legacy",
        architecture=architecture.name,
        d_in=positive_int(sae_cfg, "d_in", source),
        d_sae=positive_int(sae_cfg, "d_sae", source),
        hook_name=hook_name or None,
        layer=layer,
        model_name=metadata.pop("model_name", None),
        dtype=normalize_dtype(sae_cfg.get("dtype", "float32")),
        # 100 is TopKSAEConfig's default when a v6 config leaves k out.
        k=positive_int({"k": sae_cfg.get("k", 100)}, "k", source) if topk else None,
        apply_b_dec_to_input=bool(sae_cfg.get("apply_b_dec_to_input", True)),
        normalize_activations=check_normalization(sae_cfg.get("normalize_activations", "none")),
        rescale_acts_by_decoder_norm=topk and bool(sae_cfg.get("rescale_acts_by_decoder_norm")),
        metadata=metadata,
    )


# -- folders ------------------------------------------------------------------------------


def _expected_keys(spec: SaeSpec) -> dict[str, tuple[int, ...]]:
    assert spec.d_in is not None and spec.d_sae is not None
    keys = get_architecture(spec.architecture).saelens_keys()
    shapes = expected_shapes(spec.architecture, spec.d_in, spec.d_sae)
    return {keys[name]: shape for name, shape in shapes.items()}


def read_spec(folder: Path) -> SaeSpec:
    cfg_path = folder / CFG_FILE
    spec = spec_from_config(read_json(cfg_path), folder_name=folder.name, source=label(cfg_path))
    weights_path = folder / WEIGHTS_FILE
    shapes = tensor_shapes(weights_path)
    shapes.pop("scaling_factor", None)
    if problems := shape_problems(shapes, _expected_keys(spec)):
        raise corrupted(weights_path, "; ".join(problems))
    sparsity_path = folder / SPARSITY_FILE
    if sparsity_path.exists():
        found = tensor_shapes(sparsity_path)
        if problems := shape_problems(found, {"sparsity": (spec.d_sae or 0,)}):
            raise corrupted(sparsity_path, "; ".join(problems))
    return spec


def _fold_scaling_factor(
    tensors: dict[str, Tensor], cfg: Mapping[str, Any], path: Path
) -> dict[str, Tensor]:
    scaling = tensors.pop("scaling_factor", None)
    if scaling is None or torch.allclose(scaling, torch.ones_like(scaling)):
        return tensors
    if not cfg.get("finetuning_scaling_factor"):
        raise corrupted(
            path, "holds a scaling_factor but cfg.json sets finetuning_scaling_factor false"
        )
    w_dec = tensors.get("W_dec")
    if w_dec is None or tuple(scaling.shape) != (w_dec.shape[0],):
        raise corrupted(path, f"scaling_factor has shape {list(scaling.shape)}")
    # (f * s) @ W_dec == f @ (s[:, None] * W_dec): scale each feature's decoder row.
    tensors["W_dec"] = w_dec * scaling[:, None]
    return tensors


def read_sparsity(path: Path, device: str | torch.device, d_sae: int) -> Tensor | None:
    if not path.exists():
        return None
    tensors = read_tensors(path, device)
    if problems := shape_problems(
        {k: tuple(t.shape) for k, t in tensors.items()}, {"sparsity": (d_sae,)}
    ):
        raise corrupted(path, "; ".join(problems))
    return tensors["sparsity"]


def load(folder: Path, device: str | torch.device, dtype: torch.dtype | None) -> Sae:
    cfg_path = folder / CFG_FILE
    cfg = read_json(cfg_path)
    spec = spec_from_config(cfg, folder_name=folder.name, source=label(cfg_path))
    weights_path = folder / WEIGHTS_FILE
    tensors = _fold_scaling_factor(read_tensors(weights_path, device), cfg, weights_path)
    found = {key: tuple(t.shape) for key, t in tensors.items()}
    if problems := shape_problems(found, _expected_keys(spec)):
        raise corrupted(weights_path, "; ".join(problems))
    to = target_dtype(spec, dtype)
    keys = get_architecture(spec.architecture).saelens_keys()
    weights = SaeWeights(**{name: tensors[key].to(to) for name, key in keys.items()})
    assert spec.d_sae is not None
    log_sparsity = read_sparsity(folder / SPARSITY_FILE, device, spec.d_sae)
    spec = dataclasses.replace(spec, dtype=dtype_name(to))
    return checked_sae(spec, weights, weights_path, log_sparsity)


def save(sae: Sae, folder: Path) -> list[Path]:
    """Writes the v6 layout SAELens' `SAE.load_from_disk` reads."""
    spec = sae.spec
    metadata = dict(spec.metadata)
    reshape = metadata.pop("reshape_activations", "none")
    metadata["model_name"] = spec.model_name
    metadata["hook_name"] = spec.hook_name
    if spec.hook_name is None and spec.layer is not None:
        metadata["hook_layer"] = spec.layer  # so a reload still knows the layer
    if not is_v6(metadata):
        metadata["sae_lens_version"] = WRITTEN_SAE_LENS_VERSION
    cfg: dict[str, Any] = {
        "architecture": spec.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": dtype_name(sae.weights.W_enc.dtype),
        "device": "cpu",
        "apply_b_dec_to_input": spec.apply_b_dec_to_input,
        "normalize_activations": spec.normalize_activations,
        "reshape_activations": reshape,
    }
    if get_architecture(spec.architecture).keeps_top_k:
        cfg["k"] = spec.k
        cfg["rescale_acts_by_decoder_norm"] = spec.rescale_acts_by_decoder_norm
    cfg["metadata"] = metadata

    keys = get_architecture(spec.architecture).saelens_keys()
    tensors = {
        keys[name]: t.detach().cpu().contiguous() for name, t in sae.weights.tensors().items()
    }
    folder.mkdir(parents=True, exist_ok=True)
    weights_path = folder / WEIGHTS_FILE
    save_file(tensors, str(weights_path))
    cfg_path = folder / CFG_FILE
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    written = [cfg_path, weights_path]
    if sae.log_sparsity is not None:
        sparsity_path = folder / SPARSITY_FILE
        save_file({"sparsity": sae.log_sparsity.detach().cpu().contiguous()}, str(sparsity_path))
        written.append(sparsity_path)
    return written
