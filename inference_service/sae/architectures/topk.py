"""TopK SAEs (Gao et al. 2024): each token keeps its k largest features.

With `rescale_acts_by_decoder_norm` (SAELens), features are ranked as if every
decoder row had unit norm, and decode undoes that scale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from inference_service.sae.architectures.base import Architecture, SaeWeights
from inference_service.sae.architectures.sparse_codes import SparseCodes, topk_per_row
from inference_service.sae.spec import SaeSpec

if TYPE_CHECKING:
    from inference_service.training.trainable import TrainableSae


class TopK(Architecture):
    name = "topk"
    keeps_top_k = True
    sparse_training = True

    def encode(self, sae_in: Tensor, w: SaeWeights, spec: SaeSpec) -> Tensor:
        assert spec.k is not None
        hidden_pre = sae_in @ w.W_enc + w.b_enc  # [..., d_sae]
        if spec.rescale_acts_by_decoder_norm:
            # Rank features as if every decoder row had unit norm.
            hidden_pre = hidden_pre * w.W_dec.norm(dim=-1)
        values, indices = hidden_pre.topk(spec.k, dim=-1, sorted=False)  # [..., k]
        return torch.zeros_like(hidden_pre).scatter_(-1, indices, values.relu())

    def decode(self, f: Tensor, w: SaeWeights, spec: SaeSpec) -> Tensor:
        if spec.rescale_acts_by_decoder_norm:
            f = f * (1 / w.W_dec.norm(dim=-1))  # undo the ranking rescale of encode
        return f @ w.W_dec + w.b_dec

    def spec_problems(self, spec: SaeSpec, d_sae: int) -> list[str]:
        if spec.k is None or not 0 < spec.k <= d_sae:
            return [f"k must be between 1 and d_sae={d_sae}, got {spec.k}"]
        return []

    def activate(self, pre: Tensor, sae: TrainableSae) -> Tensor:
        acts = torch.relu(pre)
        values, indices = acts.topk(sae.config.k, dim=-1, sorted=False)
        return torch.zeros_like(acts).scatter(-1, indices, values)

    def select(self, pre: Tensor, k: int) -> SparseCodes:
        return topk_per_row(pre, k)


ARCHITECTURE = TopK()
