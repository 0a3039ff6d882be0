"""Running per-feature statistics over every recorded token.

The lane folds each capture in with a few vectorised reductions over all
features; readers take a consistent snapshot and summarise the features they
ask for. Counts are kept exactly (int64) and sums in float64 so long runs do
not drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from inference_service.errors import InvalidArgumentError


@dataclass(frozen=True)
class FeatureStats:
    index: int
    count: int  # tokens where the feature was active (> 0)
    min: float  # smallest activation when active; 0 when never active
    max: float  # largest activation; 0 when never active
    mean: float  # mean activation over the tokens where it was active
    fraction_active: float  # count / all recorded tokens


@dataclass(frozen=True)
class CaptureSummary:
    """One capture reduced over its tokens; computed outside any lock."""

    tokens: int
    count: Tensor  # [d_sae] int64
    total: Tensor  # [d_sae] float64, sum of active values
    max: Tensor  # [d_sae] float32, -inf where never active
    min: Tensor  # [d_sae] float32, +inf where never active

    @classmethod
    def of(cls, activations: Tensor) -> CaptureSummary:
        # SAE activations are sparse, so reduce only the active entries: measured
        # about twice as fast as masked dense reductions over [T, d_sae].
        # On a GPU the reduction runs there and only the four [d_sae] results come
        # back, in one copy (float64 holds the counts and float32 extremes exactly).
        acts = activations.detach().to(torch.float32)  # [T, d_sae]
        d_sae, device = acts.shape[-1], acts.device
        rows, cols = (acts > 0).nonzero(as_tuple=True)  # [nnz] each: where features fire
        values = acts[rows, cols]  # [nnz]
        count = torch.bincount(cols, minlength=d_sae)
        total = torch.zeros(d_sae, dtype=torch.float64, device=device)
        total.index_add_(0, cols, values.double())
        high = torch.full((d_sae,), float("-inf"), device=device)
        high.scatter_reduce_(0, cols, values, "amax")
        low = torch.full((d_sae,), float("inf"), device=device)
        low.scatter_reduce_(0, cols, values, "amin")
        if device.type != "cpu":
            packed = torch.stack([count.double(), total, high.double(), low.double()]).cpu()
            count, total = packed[0].long(), packed[1]
            high, low = packed[2].float(), packed[3].float()
        return cls(tokens=acts.shape[0], count=count, total=total, max=high, min=low)


class RunningStatistics:
    """Accumulated statistics for an SAE with `d_sae` features. Not thread-safe."""

    def __init__(self, d_sae: int) -> None:
        self.d_sae = d_sae
        self.tokens = 0
        self.count = torch.zeros(d_sae, dtype=torch.int64)
        self.total = torch.zeros(d_sae, dtype=torch.float64)
        self.max = torch.full((d_sae,), float("-inf"))
        self.min = torch.full((d_sae,), float("inf"))

    def add(self, summary: CaptureSummary) -> None:
        self.tokens += summary.tokens
        self.count += summary.count
        self.total += summary.total
        torch.maximum(self.max, summary.max, out=self.max)
        torch.minimum(self.min, summary.min, out=self.min)

    def copy(self) -> RunningStatistics:
        out = RunningStatistics.__new__(RunningStatistics)
        out.d_sae, out.tokens = self.d_sae, self.tokens
        out.count, out.total = self.count.clone(), self.total.clone()
        out.max, out.min = self.max.clone(), self.min.clone()
        return out

    def most_active(self, limit: int) -> list[int]:
        """The `limit` features active on most tokens (ties by index); never-active ones omitted."""
        order = torch.sort(self.count, descending=True, stable=True).indices[:limit]
        return [i for i in order.tolist() if self.count[i] > 0]

    def summarise(self, features: Sequence[int]) -> list[FeatureStats]:
        check_feature_range(features, self.d_sae)
        if not features:
            return []
        index = torch.tensor(list(features), dtype=torch.int64)
        count = self.count[index]
        active = count > 0
        mean = torch.where(active, self.total[index] / count.clamp(min=1), 0.0)
        low = torch.where(active, self.min[index], 0.0)
        high = torch.where(active, self.max[index], 0.0)
        fraction = (
            (count.to(torch.float64) / self.tokens) if self.tokens else torch.zeros_like(mean)
        )
        return [
            FeatureStats(i, c, lo, hi, m, f)
            for i, c, lo, hi, m, f in zip(
                features,
                count.tolist(),
                low.tolist(),
                high.tolist(),
                mean.tolist(),
                fraction.tolist(),
                strict=True,
            )
        ]


def check_feature_range(features: Sequence[int], d_sae: int | None) -> None:
    """Raises InvalidArgumentError naming the valid range for the first index outside it."""
    for index in features:
        if index < 0 or (d_sae is not None and index >= d_sae):
            limit = f"0 to {d_sae - 1}" if d_sae else "none"
            raise InvalidArgumentError(
                f"Feature {index} is out of range: the SAE has {d_sae} features ({limit}).",
                param="features",
            )
