"""Sparse training arithmetic for TopK and BatchTopK SAEs.

A TopK SAE keeps k of d_sae features per token (32 of 4,608, say), yet the dense
way to train it multiplies the whole [batch, d_sae] code matrix with the decoder
and back again: four of its five large matmuls work on zeros. Here only the
encoder's forward pass stays dense (every pre-activation is needed to choose the
top k); the decoder, its gradient, and the gradients that flow back into the
encoder touch only the kept entries, as sparse-dense products on a CSR pattern.
A CSR product costs several times a dense one per entry, so this pays only when
few entries are kept; training/trainable.py chooses by the kept fraction, with
the measurements behind the rule.

Both autograd functions here are exact: they compute what the dense expressions
compute, in a different summation order (tests compare them with the dense path).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# PyTorch labels its CSR support beta; the products used here are long-standing.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


@dataclass(frozen=True)
class SparseCodes:
    """Which entries of a [rows, d_sae] code matrix are kept, in CSR order."""

    crow: Tensor  # [rows + 1] offsets into cols
    cols: Tensor  # [nnz] feature of each kept entry, ascending within a row
    flat: Tensor  # [nnz] row * d_sae + col, ascending
    shape: tuple[int, int]

    @classmethod
    def from_flat(cls, flat: Tensor, shape: tuple[int, int]) -> SparseCodes:
        """From ascending flat indices (row * d_sae + col)."""
        rows, width = shape
        counts = torch.bincount(flat // width, minlength=rows)
        crow = torch.zeros(rows + 1, dtype=torch.int64, device=flat.device)
        torch.cumsum(counts, 0, out=crow[1:])
        return cls(crow=crow, cols=flat % width, flat=flat, shape=shape)

    def csr(self, values: Tensor) -> Tensor:
        return torch.sparse_csr_tensor(
            self.crow, self.cols, values, size=self.shape, check_invariants=False
        )

    def dense(self, values: Tensor) -> Tensor:
        out = values.new_zeros(self.shape[0] * self.shape[1])
        return out.index_copy_(0, self.flat, values).view(self.shape)


def topk_per_row(scores: Tensor, k: int) -> SparseCodes:
    """The k largest entries of each row."""
    _, indices = scores.topk(k, dim=-1, sorted=False)
    indices, _ = indices.sort(dim=-1)
    offsets = torch.arange(scores.shape[0], device=scores.device).unsqueeze(1) * scores.shape[1]
    return SparseCodes.from_flat((indices + offsets).flatten(), (scores.shape[0], scores.shape[1]))


def topk_of_batch(scores: Tensor, k: int) -> SparseCodes:
    """The k x rows largest entries of the whole batch (BatchTopK)."""
    keep = min(k * scores.shape[0], scores.numel())
    _, flat = scores.flatten().topk(keep, sorted=False)
    flat, _ = flat.sort()
    return SparseCodes.from_flat(flat, (scores.shape[0], scores.shape[1]))


class _Gather(torch.autograd.Function):
    """values = pre[kept], where pre = sae_in @ W_enc + b_enc was computed without
    autograd; the backward pass sends each kept entry's gradient to sae_in, W_enc
    and b_enc as the dense matmul's backward would, skipping the zeros."""

    @staticmethod
    def forward(
        ctx: Any, pre: Tensor, sae_in: Tensor, w_enc: Tensor, b_enc: Tensor, codes: SparseCodes
    ) -> Tensor:
        ctx.save_for_backward(sae_in, w_enc)
        ctx.codes = codes
        return pre.flatten()[codes.flat]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        sae_in, w_enc = ctx.saved_tensors
        codes: SparseCodes = ctx.codes
        g = codes.csr(grad)
        grad_in = torch.sparse.mm(g, w_enc.T) if ctx.needs_input_grad[1] else None
        grad_w = torch.sparse.mm(g.t(), sae_in).T if ctx.needs_input_grad[2] else None
        grad_b = None
        if ctx.needs_input_grad[3]:
            grad_b = grad.new_zeros(codes.shape[1]).index_add_(0, codes.cols, grad)
        return None, grad_in, grad_w, grad_b, None


class _Decode(torch.autograd.Function):
    """codes(values) @ W_dec with a sparse left operand, both ways."""

    @staticmethod
    def forward(ctx: Any, values: Tensor, w_dec: Tensor, codes: SparseCodes) -> Tensor:
        ctx.save_for_backward(values, w_dec)
        ctx.codes = codes
        return torch.sparse.mm(codes.csr(values), w_dec)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        values, w_dec = ctx.saved_tensors
        codes: SparseCodes = ctx.codes
        grad_values = grad_w = None
        if ctx.needs_input_grad[0]:
            # (grad @ W_dec.T) at the kept entries only.
            pattern = codes.csr(torch.zeros_like(values))
            grad_values = torch.sparse.sampled_addmm(pattern, grad, w_dec.T, beta=0.0).values()
        if ctx.needs_input_grad[1]:
            grad_w = torch.sparse.mm(codes.csr(values).t(), grad)
        return grad_values, grad_w, None


def gather(pre: Tensor, sae_in: Tensor, w_enc: Tensor, b_enc: Tensor, codes: SparseCodes) -> Tensor:
    """The kept pre-activations, differentiable in the encoder's inputs."""
    return _Gather.apply(pre, sae_in, w_enc, b_enc, codes)


def decode(values: Tensor, w_dec: Tensor, codes: SparseCodes) -> Tensor:
    """The decoder's product for sparse codes, without b_dec: [rows, d_out]."""
    return _Decode.apply(values, w_dec, codes)
