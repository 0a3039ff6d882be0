"""Standard SAEs: f = ReLU(pre), trained with an L1 penalty on the activations."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from inference_service.sae.architectures.base import Architecture, SaeWeights
from inference_service.sae.spec import SaeSpec

if TYPE_CHECKING:
    from inference_service.training.trainable import TrainableSae


class Standard(Architecture):
    name = "standard"
    columnwise = True
    default_decoder_norm = "none"  # the L1 penalty below already weighs by decoder norm
    transcoder_names = ("transcoder", "skip_transcoder")

    def encode(self, sae_in: Tensor, w: SaeWeights, spec: SaeSpec) -> Tensor:
        return torch.relu(sae_in @ w.W_enc + w.b_enc)

    def activate(self, pre: Tensor, sae: TrainableSae) -> Tensor:
        return torch.relu(pre)

    def sparsity_loss(self, pre: Tensor, f: Tensor, sae: TrainableSae, scale: float) -> Tensor:
        # L1 weighted by decoder norms, so shrinking W_dec cannot buy sparsity.
        weighted = f * sae.W_dec.norm(dim=1)
        return scale * sae.config.l1_coefficient * weighted.sum(dim=-1).mean()


ARCHITECTURE = Standard()
