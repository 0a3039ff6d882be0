"""The numbers a run reports, defined once.

FVU (fraction of variance unexplained) is sum_rows |y - y_hat|^2 divided by
sum_rows |y - mean(y)|^2, the mean taken over the same rows: 0 is a perfect
reconstruction, 1 is no better than predicting the mean. L0 is the mean number
of active (non-zero) features per row; L1 the mean sum of activations per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Reconstruction:
    mse: float
    fvu: float
    l0: float
    l1: float


def fraction_of_variance_unexplained(y: Tensor, y_hat: Tensor) -> float:
    residual = (y - y_hat).double().pow(2).sum()
    variance = (y - y.mean(dim=0)).double().pow(2).sum()
    return float(residual / variance) if variance > 0 else float("nan")


@torch.no_grad()
def reconstruction(y: Tensor, y_hat: Tensor, f: Tensor) -> Reconstruction:
    return Reconstruction(
        mse=float((y - y_hat).pow(2).sum(dim=-1).mean()),
        fvu=fraction_of_variance_unexplained(y, y_hat),
        l0=float((f != 0).sum(dim=-1).float().mean()),
        l1=float(f.sum(dim=-1).mean()),
    )


class FeatureStatistics:
    """Per-feature counts over many batches: how often each fires and how high."""

    def __init__(self, d_sae: int) -> None:
        self.rows = 0
        self.fired = torch.zeros(d_sae, dtype=torch.long)
        self.max = torch.zeros(d_sae)
        self.sum = torch.zeros(d_sae, dtype=torch.float64)

    @torch.no_grad()
    def add(self, f: Tensor) -> None:
        self.rows += f.shape[0]
        # Reduced where `f` is (the GPU when training there); [d_sae] comes back.
        self.fired += (f > 0).sum(dim=0).cpu()
        self.max = torch.maximum(self.max, f.max(dim=0).values.float().cpu())
        self.sum += f.sum(dim=0).double().cpu()

    @property
    def frequency(self) -> Tensor:
        return self.fired.double().div(max(self.rows, 1)).float()

    @property
    def mean_when_active(self) -> Tensor:
        return (self.sum / self.fired.clamp_min(1)).float()
