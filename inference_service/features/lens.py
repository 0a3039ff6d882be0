"""Logit lens of a decoder row: the tokens a feature pushes up and down.

The row goes through the model's final norm and its unembedding, as the
residual stream does after the last layer: logits = lm_head(final_norm(W_dec[i])).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from inference_service.errors import UnsupportedError

# Where causal LMs keep the norm after their last layer, by family (as in hook_sites.py).
_FINAL_NORMS = (
    "model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
)


@dataclass(frozen=True)
class LensLogits:
    promoted: list[tuple[int, float]]  # (token id, logit), highest first
    suppressed: list[tuple[int, float]]  # lowest first


def final_norm(model: nn.Module) -> nn.Module:
    for path in _FINAL_NORMS:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise UnsupportedError(
        f"miLLM cannot find the final norm of {type(model).__name__}; supported families "
        "keep it at " + ", ".join(_FINAL_NORMS) + "."
    )


@torch.inference_mode()
def decoder_row_logits(model: nn.Module, row: Tensor) -> Tensor:
    """[d_model] decoder row -> [vocab] logits through the final norm and unembedding."""
    language_model: Any = model  # a transformers PreTrainedModel
    unembedding = language_model.get_output_embeddings()
    # An nn.Linear, or a quantized stand-in that still exposes its (dequantized) weight.
    weight = getattr(unembedding, "weight", None)
    if not isinstance(weight, Tensor):
        raise UnsupportedError(f"The output layer of {type(model).__name__} exposes no weight.")
    normed = final_norm(model)(row.to(device=weight.device, dtype=weight.dtype).view(1, 1, -1))
    return unembedding(normed).view(-1).float().cpu()


def lens(logits: Tensor, count: int) -> LensLogits:
    top = logits.topk(count)
    bottom = logits.topk(count, largest=False)
    return LensLogits(
        promoted=list(zip(top.indices.tolist(), top.values.tolist(), strict=True)),
        suppressed=list(zip(bottom.indices.tolist(), bottom.values.tolist(), strict=True)),
    )
