"""BatchTopK SAEs (Bussmann et al. 2024): a training scheme, saved as JumpReLU.

Training keeps the k x batch largest activations of the whole batch and tracks
the threshold that keeps about as many per token; at inference time (and on
disk) the SAE is a JumpReLU with that one threshold for every feature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from inference_service.sae.architectures.base import Architecture
from inference_service.sae.architectures.sparse_codes import SparseCodes, topk_of_batch

if TYPE_CHECKING:
    from inference_service.training.trainable import TrainableSae

# How fast the inference threshold follows each batch's smallest kept activation.
_THRESHOLD_RATE = 0.01


class BatchTopK(Architecture):
    name = "batchtopk"
    loadable = False
    keeps_top_k = True
    sparse_training = True

    @property
    def saved_as(self) -> str:
        return "jumprelu"

    def activate(self, pre: Tensor, sae: TrainableSae) -> Tensor:
        return torch.relu(pre) * (pre > sae.batch_threshold)

    def select(self, pre: Tensor, k: int) -> SparseCodes:
        return topk_of_batch(pre, k)

    @torch.no_grad()
    def observe_kept(self, values: Tensor, sae: TrainableSae) -> None:
        """Follows the batch's smallest kept activation: the per-token threshold
        that keeps about as many features at inference time."""
        positive = values[values > 0]
        if positive.numel():
            smallest = positive.min()
            if sae.batch_threshold == 0:
                sae.batch_threshold.copy_(smallest)
            else:
                sae.batch_threshold.lerp_(smallest, _THRESHOLD_RATE)

    def saved_threshold(self, sae: TrainableSae) -> Tensor | None:
        return sae.batch_threshold.expand(sae.d_sae).clone()


ARCHITECTURE = BatchTopK()
