"""The SAE being trained: parameters, the forward pass, its losses.

Conventions follow SAELens v6 so the saved weights mean the same thing there:

    pre   = (x - b_dec) @ W_enc + b_enc     # b_dec subtracted for SAEs, not transcoders
    f     = activation(pre)                 # the architecture's (sae/architectures/)
    y_hat = f @ W_dec + b_dec  (+ x @ W_skip.T for a skip transcoder)

Each architecture brings its activation, its sparsity penalty and, for TopK and
BatchTopK, which entries a step keeps; the losses here are the same for all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from inference_service.sae.architectures import ARCHITECTURES, sparse_codes
from inference_service.training.config import TrainingConfig

# TopK and BatchTopK steps multiply through sparse products (sparse_codes.py) only
# when few entries are kept: k <= d_sae / 128. Measured with a forward and backward
# pass, d_in 576, d_sae 4,608, ms per step on the 2-core development machine
# (under load from other jobs, so within about 2x):
#   k 32 (1/144), batch 1,024: dense 1,541 / 1,696 / 3,210, sparse 841 / 1,425 / 1,145
#   k 32 (1/144), batch 4,096: dense 2,893 / 9,183, sparse 1,343 / 3,158
#   k 72 (1/64), batch 1,024: dense 1,877, sparse 2,287
#   k 144 (1/32), batch 1,024: dense 2,224, sparse 3,486
#   k 576 (1/8), batch 1,024: dense 1,961, sparse 3,130
# The batch size did not change the winner (both products scale with it); the kept
# fraction did: a CSR product costs several times a dense one per entry it touches.
_SPARSE_MAX_KEPT_FRACTION = 1 / 128


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
    log_threshold: nn.Parameter  # [d_sae], JumpReLU's (its init_training adds it)
    batch_threshold: Tensor  # scalar, BatchTopK's

    def __init__(self, config: TrainingConfig, d_in: int, d_out: int, generator: torch.Generator):
        super().__init__()
        self.config = config
        self.architecture = ARCHITECTURES[config.architecture]
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
        self.architecture.init_training(self)
        # Kept-entry architectures: whether their steps use sparse products (see above).
        self.sparse_products = (
            self.architecture.sparse_training
            and config.k is not None
            and config.k <= self.d_sae * _SPARSE_MAX_KEPT_FRACTION
        )
        # BatchTopK's per-token threshold for inference; a buffer, not learned. Every
        # architecture has it, so every checkpoint holds the same entries.
        self.register_buffer("batch_threshold", torch.zeros(()))

    # ---- the forward pass ---------------------------------------------------------

    def pre_activations(self, x: Tensor) -> Tensor:
        sae_in = x - self.b_dec if self.apply_b_dec_to_input else x
        return sae_in @ self.W_enc + self.b_enc

    def decode(self, f: Tensor, x: Tensor) -> Tensor:
        y_hat = f @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            y_hat = y_hat + x @ self.W_skip.T
        return y_hat

    def encode(self, x: Tensor) -> Tensor:
        """Inference-time features (BatchTopK as its saved JumpReLU form)."""
        return self.architecture.activate(self.pre_activations(x), self)

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
        if self.architecture.sparse_training:
            return self._forward_kept(x, y, dead)
        pre = self.pre_activations(x)
        f = self.architecture.activate(pre, self)
        y_hat = self.decode(f, x)
        mse = (y_hat - y).pow(2).sum(dim=-1).mean()
        sparsity = self.architecture.sparsity_loss(pre, f, self, sparsity_scale)
        return StepOutput(f, y_hat, mse, sparsity, mse.new_zeros(()))

    def _forward_kept(self, x: Tensor, y: Tensor, dead: Tensor | None) -> StepOutput:
        """TopK and BatchTopK: the kept entries of each step, through sparse products
        (sparse_codes explains why) or dense ones, whichever is faster for this
        shape; `f` comes back dense but detached, for metrics."""
        sae_in = x - self.b_dec if self.apply_b_dec_to_input else x
        if self.sparse_products:
            with torch.no_grad():
                pre = torch.addmm(self.b_enc, sae_in, self.W_enc)
            codes = self.architecture.select(pre, self.config.k)
            values = torch.relu(sparse_codes.gather(pre, sae_in, self.W_enc, self.b_enc, codes))
            y_hat = sparse_codes.decode(values, self.W_dec, codes) + self.b_dec
        else:
            pre_grad = torch.addmm(self.b_enc, sae_in, self.W_enc)  # [B, d_sae]
            pre = pre_grad.detach()
            codes = self.architecture.select(pre, self.config.k)
            values = torch.relu(pre_grad.flatten()[codes.flat])
            y_hat = codes.dense(values) @ self.W_dec + self.b_dec
        self.architecture.observe_kept(values.detach(), self)
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
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
