"""JumpReLU SAEs: f = pre where pre > theta (a learned threshold per feature), else 0.

Training learns the thresholds through straight-through estimators with a
rectangle kernel (Rajamanoharan et al. 2024): the forward pass is the true step,
the backward pass gives the threshold a gradient from the inputs within half a
bandwidth of it. The sparsity penalty is the L0 count through the same estimator.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from inference_service.sae.architectures.base import Architecture, SaeWeights
from inference_service.sae.spec import SaeSpec

if TYPE_CHECKING:
    from inference_service.training.trainable import TrainableSae


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - theta); d/dtheta by the rectangle-kernel estimator."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = (pre > threshold) * grad
        near = ((pre - threshold).abs() < eps / 2).to(grad.dtype)
        grad_threshold = (-(threshold / eps) * near * grad).sum(dim=0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    """H(pre - theta), the L0 count; only theta gets a (straight-through) gradient."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((pre - threshold).abs() < eps / 2).to(grad.dtype)
        return None, (-(1.0 / eps) * near * grad).sum(dim=0), None


class JumpRelu(Architecture):
    name = "jumprelu"
    extra_tensors = ("threshold",)
    columnwise = True
    transcoder_names = ("jumprelu_transcoder", "jumprelu_skip_transcoder")

    def encode(self, sae_in: Tensor, w: SaeWeights, spec: SaeSpec) -> Tensor:
        assert w.threshold is not None
        hidden_pre = sae_in @ w.W_enc + w.b_enc  # [..., d_sae]
        # ReLU first, as SAELens does: it matters for features with a negative threshold.
        return torch.relu(hidden_pre) * (hidden_pre > w.threshold).to(hidden_pre.dtype)

    def init_training(self, sae: TrainableSae) -> None:
        start = math.log(sae.config.jumprelu_init_threshold)
        sae.log_threshold = nn.Parameter(torch.full((sae.d_sae,), start))

    def activate(self, pre: Tensor, sae: TrainableSae) -> Tensor:
        return _JumpReLU.apply(pre, sae.log_threshold.exp(), sae.config.jumprelu_bandwidth)

    def sparsity_loss(self, pre: Tensor, f: Tensor, sae: TrainableSae, scale: float) -> Tensor:
        l0 = _Step.apply(pre, sae.log_threshold.exp(), sae.config.jumprelu_bandwidth)
        return scale * sae.config.l0_coefficient * l0.sum(dim=-1).mean()

    def saved_threshold(self, sae: TrainableSae) -> Tensor | None:
        return sae.log_threshold.detach().exp()


ARCHITECTURE = JumpRelu()
