"""The SAE being trained: parameters, the forward pass of each architecture, its losses.

Conventions follow SAELens v6 so the saved weights mean the same thing there:

    pre   = (x - b_dec) @ W_enc + b_enc     # b_dec subtracted for SAEs, not transcoders
    f     = activation(pre)                 # ReLU, JumpReLU, TopK or BatchTopK
    y_hat = f @ W_dec + b_dec  (+ x @ W_skip.T for a skip transcoder)

JumpReLU learns its thresholds through straight-through estimators with a
rectangle kernel (Rajamanoharan et al. 2024): the forward pass is the true step,
the backward pass gives the threshold a gradient from the inputs within half a
bandwidth of it. BatchTopK keeps the k x batch largest activations of the batch
and tracks the threshold that does the same per token at inference time, which
is how it is saved (as JumpReLU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from inference_service.training import sparse_codes
from inference_service.training.config import TrainingConfig

# How fast the BatchTopK inference threshold follows each batch's smallest kept activation.
_THRESHOLD_RATE = 0.01


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


@dataclass
class StepOutput:
    """One forward pass over a batch: what the loss and the metrics need."""

    f: Tensor  # [B, d_sae]
    y_hat: Tensor  # [B, d_out]
    mse: Tensor  # scalar, mean over rows of the summed squared error
    sparsity: Tensor  # scalar, already weighted by its coefficient
    aux: Tensor  # scalar, TopK's dead-feature loss (already weighted), else 0

    @property
    def loss(self) -> Tensor:
        return self.mse + self.sparsity + self.aux


class TrainableSae(nn.Module):
    def __init__(self, config: TrainingConfig, d_in: int, d_out: int, generator: torch.Generator):
        super().__init__()
        self.config = config
        self.architecture = config.architecture
        self.d_in, self.d_out, self.d_sae = d_in, d_out, config.d_sae
        self.apply_b_dec_to_input = not config.is_transcoder
        # Decoder rows start as random unit directions and the encoder as their
        # transpose (or its own random directions for a transcoder): the usual
        # tied initialisation, which trains fast and leaves few dead features.
        w_dec = torch.randn(self.d_sae, d_out, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        if config.is_transcoder:
            w_enc = torch.randn(d_in, self.d_sae, generator=generator)
            w_enc /= w_enc.norm(dim=0, keepdim=True)
        else:
            w_enc = w_dec.T.clone()
        self.W_enc = nn.Parameter(w_enc)
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        self.W_dec = nn.Parameter(w_dec)
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.W_skip = nn.Parameter(torch.zeros(d_out, d_in)) if config.skip else None
        if self.architecture == "jumprelu":
            start = math.log(config.jumprelu_init_threshold)
            self.log_threshold = nn.Parameter(torch.full((self.d_sae,), start))
        # BatchTopK's per-token threshold for inference; a buffer, not learned.
        self.register_buffer("batch_threshold", torch.zeros(()))

    # ---- the forward pass ---------------------------------------------------------

    def pre_activations(self, x: Tensor) -> Tensor:
        sae_in = x - self.b_dec if self.apply_b_dec_to_input else x
        return sae_in @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        if self.architecture == "standard":
            return torch.relu(pre)
        if self.architecture == "jumprelu":
            return _JumpReLU.apply(pre, self.log_threshold.exp(), self.config.jumprelu_bandwidth)
        if self.architecture == "topk":
            return _topk(torch.relu(pre), self.config.k)
        return torch.relu(pre) * (pre > self.batch_threshold)

    @torch.no_grad()
    def _track_threshold(self, kept: Tensor) -> None:
        """Follow the batch's smallest kept activation: the per-token threshold
        that keeps about as many features at inference time."""
        positive = kept[kept > 0]
        if positive.numel():
            smallest = positive.min()
            if self.batch_threshold == 0:
                self.batch_threshold.copy_(smallest)
            else:
                self.batch_threshold.lerp_(smallest, _THRESHOLD_RATE)

    def decode(self, f: Tensor, x: Tensor) -> Tensor:
        y_hat = f @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            y_hat = y_hat + x @ self.W_skip.T
        return y_hat

    def encode(self, x: Tensor) -> Tensor:
        """Inference-time features (BatchTopK as its saved JumpReLU form)."""
        return self.activate(self.pre_activations(x))

    def forward_batch(
        self,
        x: Tensor,
        y: Tensor,
        *,
        sparsity_scale: float,
        dead: Tensor | None,
    ) -> StepOutput:
        """The training forward pass with its losses.

        `sparsity_scale` is the sparsity coefficient after warm-up; `dead` marks
        the features TopK's auxiliary loss may use.
        """
        if self.architecture in ("topk", "batchtopk"):
            return self._forward_sparse(x, y, dead)
        pre = self.pre_activations(x)
        f = self.activate(pre)
        y_hat = self.decode(f, x)
        mse = (y_hat - y).pow(2).sum(dim=-1).mean()
        zero = mse.new_zeros(())
        sparsity = zero
        if self.architecture == "standard":
            # L1 weighted by decoder norms, so shrinking W_dec cannot buy sparsity.
            weighted = f * self.W_dec.norm(dim=1)
            sparsity = sparsity_scale * self.config.l1_coefficient * weighted.sum(dim=-1).mean()
        elif self.architecture == "jumprelu":
            l0 = _Step.apply(pre, self.log_threshold.exp(), self.config.jumprelu_bandwidth)
            sparsity = sparsity_scale * self.config.l0_coefficient * l0.sum(dim=-1).mean()
        return StepOutput(f, y_hat, mse, sparsity, mse.new_zeros(()))

    def _forward_sparse(self, x: Tensor, y: Tensor, dead: Tensor | None) -> StepOutput:
        """TopK and BatchTopK: the same losses, computed on the kept entries only
        (sparse_codes explains why); `f` comes back dense but detached, for metrics."""
        sae_in = x - self.b_dec if self.apply_b_dec_to_input else x
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, sae_in, self.W_enc)
        if self.architecture == "topk":
            codes = sparse_codes.topk_per_row(pre, self.config.k)
        else:
            codes = sparse_codes.topk_of_batch(pre, self.config.k)
        values = torch.relu(sparse_codes.gather(pre, sae_in, self.W_enc, self.b_enc, codes))
        if self.architecture == "batchtopk":
            self._track_threshold(values.detach())
        y_hat = sparse_codes.decode(values, self.W_dec, codes) + self.b_dec
        if self.W_skip is not None:
            y_hat = y_hat + x @ self.W_skip.T
        mse = (y_hat - y).pow(2).sum(dim=-1).mean()
        aux = mse.new_zeros(())
        if dead is not None:
            aux = self._aux_loss(pre, sae_in, y - y_hat.detach(), dead)
        f = codes.dense(values.detach())
        return StepOutput(f, y_hat, mse, mse.new_zeros(()), aux)

    def _aux_loss(self, pre: Tensor, sae_in: Tensor, residual: Tensor, dead: Tensor) -> Tensor:
        """Gao et al.'s AuxK: the dead features alone try to explain what the live
        ones missed, which gives them gradient and brings them back."""
        coefficient = self.config.aux_k_coefficient
        n_dead = int(dead.sum())
        if coefficient <= 0 or n_dead == 0:
            return pre.new_zeros(())
        k_aux = min(self.d_in // 2, n_dead)
        codes = sparse_codes.topk_per_row(pre.masked_fill(~dead, -math.inf), k_aux)
        values = torch.relu(sparse_codes.gather(pre, sae_in, self.W_enc, self.b_enc, codes))
        residual_hat = sparse_codes.decode(values, self.W_dec, codes)
        error = (residual_hat - residual).pow(2).sum(dim=-1).mean()
        variance = (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean()
        return coefficient * error / variance.clamp_min(1e-12)

    # ---- between steps ---------------------------------------------------------------

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def inference_threshold(self) -> Tensor | None:
        """The JumpReLU threshold a saved copy uses (JumpReLU and BatchTopK)."""
        if self.architecture == "jumprelu":
            return self.log_threshold.detach().exp()
        if self.architecture == "batchtopk":
            return self.batch_threshold.expand(self.d_sae).clone()
        return None


def _topk(acts: Tensor, k: int) -> Tensor:
    values, indices = acts.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(acts).scatter(-1, indices, values)
