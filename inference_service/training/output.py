"""A finished run on disk, in the SAELens v6 layout, with per-feature statistics.

Files: `cfg.json` (with `metadata`), `sae_weights.safetensors`,
`sparsity.safetensors` (log10 of each feature's activation frequency, as SAELens
writes it), and miLLM's own `feature_stats.safetensors` (frequency, maximum and
mean-when-active per feature: steering's default ranges come from the maximum).

The activation scale used in training is folded into the weights, so the saved
SAE reads raw activations (`normalize_activations: none`) and its features
have exactly the values they had in training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from inference_service.sae.architectures import ARCHITECTURES, Sae, SaeWeights, get_architecture
from inference_service.sae.feature_stats import FEATURE_STATS_FILE
from inference_service.sae.formats.saelens import WRITTEN_SAE_LENS_VERSION, save
from inference_service.sae.spec import SaeSpec
from inference_service.training.config import TrainingConfig
from inference_service.training.metrics import FeatureStatistics
from inference_service.training.trainable import TrainableSae

RUN_FILE = "training_run.json"
# SAELens adds this before the log so never-firing features get a finite value.
_LOG_FLOOR = 1e-10


def folded_tensors(sae: TrainableSae, scale_in: float, scale_out: float) -> dict[str, Tensor]:
    """The weights for raw activations x, y when training saw x*scale_in, y*scale_out."""
    with torch.no_grad():
        tensors = {
            "W_enc": sae.W_enc * scale_in,
            "b_enc": sae.b_enc.clone(),
            "W_dec": sae.W_dec / scale_out,
            "b_dec": sae.b_dec / scale_out,
        }
        if sae.apply_b_dec_to_input and scale_in != scale_out:
            raise ValueError("an SAE reads and writes one site, so it has one scale")
        if sae.W_skip is not None:
            tensors["W_skip"] = sae.W_skip * (scale_in / scale_out)
        threshold = sae.architecture.saved_threshold(sae)
        if threshold is not None:
            tensors["threshold"] = threshold
    return {name: t.detach().float().cpu().contiguous() for name, t in tensors.items()}


def saved_architecture(config: TrainingConfig) -> str:
    """The SAELens architecture name of the saved SAE (BatchTopK is saved as JumpReLU)."""
    architecture = ARCHITECTURES[config.architecture]
    if config.is_transcoder:
        assert architecture.transcoder_names is not None  # resolve() checked it
        plain, skip = architecture.transcoder_names
        return skip if config.skip else plain
    return architecture.saved_as


def write_output(
    folder: Path,
    *,
    config: TrainingConfig,
    sae: TrainableSae,
    scale_in: float,
    scale_out: float,
    statistics: FeatureStatistics,
    model_name: str,
    hook_name: str,
    hook_name_out: str,
    run: dict[str, Any],
) -> None:
    tensors = folded_tensors(sae, scale_in, scale_out)
    log_sparsity = torch.log10(statistics.frequency + _LOG_FLOOR)
    architecture = saved_architecture(config)
    metadata: dict[str, Any] = {
        "sae_lens_version": WRITTEN_SAE_LENS_VERSION,
        "model_name": model_name,
        "hook_name": hook_name,
        "context_size": config.context_size,
        "prepend_bos": config.prepend_bos,
        "trained_by": "miLLM",
    }
    if config.is_transcoder:
        metadata["hook_name_out"] = hook_name_out
        _write_transcoder(folder, architecture, tensors, sae, metadata)
        _save_sparsity(folder, log_sparsity)
    else:
        spec = SaeSpec(
            format="saelens",
            architecture=architecture,
            d_in=sae.d_in,
            d_sae=sae.d_sae,
            hook_name=hook_name,
            layer=None,
            model_name=model_name,
            k=config.k if get_architecture(architecture).keeps_top_k else None,
            apply_b_dec_to_input=True,
            metadata=metadata,
        )
        weights = SaeWeights(
            W_enc=tensors["W_enc"],
            b_enc=tensors["b_enc"],
            W_dec=tensors["W_dec"],
            b_dec=tensors["b_dec"],
            threshold=tensors.get("threshold"),
        )
        save(Sae(spec, weights, log_sparsity), folder)
    save_file(
        {
            "frequency": statistics.frequency.contiguous(),
            "max_activation": statistics.max.contiguous(),
            "mean_activation": statistics.mean_when_active.contiguous(),
        },
        str(folder / FEATURE_STATS_FILE),
        metadata={"rows": str(statistics.rows)},
    )
    (folder / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")


def _write_transcoder(
    folder: Path,
    architecture: str,
    tensors: dict[str, Tensor],
    sae: TrainableSae,
    metadata: dict[str, Any],
) -> None:
    cfg = {
        "architecture": architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "d_out": sae.d_out,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def _save_sparsity(folder: Path, log_sparsity: Tensor) -> None:
    save_file({"sparsity": log_sparsity.contiguous()}, str(folder / "sparsity.safetensors"))
