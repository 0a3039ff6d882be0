"""Per-feature statistics over a corpus, accumulated in one streaming pass.

Memory is bounded by the SAE's width, never by the corpus: each batch of
activations [n_tokens, d_sae] is folded into fixed-size tensors and dropped.

The histogram cannot know a feature's maximum before the pass ends, so its bins
re-bin instead: each feature has `HISTOGRAM_BINS` equal bins of width
`bin_width[f]`, a power of two, starting at 0. The first activation sets the
width to the smallest power of two whose bins reach it; a later, larger one
doubles the width (adjacent pairs of bins merge) until the bins reach it again.
Merging pairs is exact, so the counts are those a second pass with the final
width would give. Quantiles are read from the histogram, interpolating linearly
inside a bin: their error is at most one bin width (the maximum / 32 or less).

Top contexts: per feature the `top_k` strongest activations seen so far, each
with the window of token ids `radius` either side (inside its corpus window)
and the feature's activation on each of them; a batch's own top-k per feature
is merged in with one `topk`, so no Python loop runs per feature or per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

HISTOGRAM_BINS = 32
QUANTILES = (0.5, 0.9, 0.99)
PAD_TOKEN = -1  # a window position outside its corpus window


@dataclass(frozen=True)
class CorpusStatistics:
    """What every feature did over a corpus; tensors indexed by feature first."""

    tokens: int
    firing_count: Tensor  # [d_sae] int64: tokens with activation > 0
    max_activation: Tensor  # [d_sae] float32
    activation_sum: Tensor  # [d_sae] float64: sum of activations (all non-negative)
    bin_width: Tensor  # [d_sae] float32: 0 for a feature that never fired
    histogram: Tensor  # [d_sae, HISTOGRAM_BINS] int64: non-zero activations per bin
    top_values: Tensor  # [d_sae, k] float32, strongest first; 0 marks an empty slot
    top_token_ids: Tensor  # [d_sae, k, 2 * radius + 1] int32; PAD_TOKEN outside the text
    top_activations: Tensor  # [d_sae, k, 2 * radius + 1] float16

    @property
    def d_sae(self) -> int:
        return int(self.firing_count.shape[0])

    @property
    def radius(self) -> int:
        return (int(self.top_token_ids.shape[-1]) - 1) // 2

    def mean_nonzero(self) -> Tensor:
        """[d_sae] mean of the non-zero activations; 0 where a feature never fired."""
        return (self.activation_sum / self.firing_count.clamp(min=1)).float()

    def quantiles(self, qs: tuple[float, ...] = QUANTILES) -> Tensor:
        """[d_sae, len(qs)] quantiles of the non-zero activations, from the histogram."""
        counts = self.histogram.double()
        cumulative = counts.cumsum(dim=1)  # [d, B]
        total = cumulative[:, -1:]  # [d, 1]
        out = []
        for q in qs:
            target = (q * total).clamp(min=1e-9)  # [d, 1]: the rank to reach
            bin_index = torch.searchsorted(cumulative, target).clamp(max=HISTOGRAM_BINS - 1)
            below = torch.where(
                bin_index > 0,
                cumulative.gather(1, (bin_index - 1).clamp(min=0)),
                torch.zeros_like(target),
            )
            inside = counts.gather(1, bin_index).clamp(min=1)
            position = bin_index + ((target - below) / inside).clamp(0, 1)  # in bins
            value = (position.squeeze(1) * self.bin_width.double()).float()
            out.append(torch.minimum(value, self.max_activation))
        return torch.stack(out, dim=1) * (self.firing_count > 0).unsqueeze(1)


class StatisticsAccumulator:
    """Folds batches of activations into `CorpusStatistics`."""

    def __init__(self, d_sae: int, *, top_k: int, radius: int) -> None:
        width = 2 * radius + 1
        self._k, self._radius = top_k, radius
        self.tokens = 0
        self._firing = torch.zeros(d_sae, dtype=torch.int64)
        self._max = torch.zeros(d_sae)
        self._sum = torch.zeros(d_sae, dtype=torch.float64)
        self._bin_width = torch.zeros(d_sae)
        self._histogram = torch.zeros(d_sae, HISTOGRAM_BINS, dtype=torch.int64)
        self._top_values = torch.zeros(d_sae, top_k)
        self._top_ids = torch.full((d_sae, top_k, width), PAD_TOKEN, dtype=torch.int32)
        self._top_acts = torch.zeros(d_sae, top_k, width, dtype=torch.float16)

    @torch.inference_mode()
    def add(self, token_ids: Tensor, activations: Tensor) -> None:
        """token_ids [B, T], activations [B, T, d_sae] (>= 0) of the same windows."""
        acts = activations.float().clamp(min=0)
        flat = acts.reshape(-1, acts.shape[-1])  # [n, d]
        self.tokens += flat.shape[0]
        fired = flat > 0
        self._firing += fired.sum(dim=0)
        self._sum += flat.sum(dim=0, dtype=torch.float64)
        self._max = torch.maximum(self._max, flat.amax(dim=0))
        self._widen_bins()
        self._count_into_bins(flat, fired)
        self._merge_top_contexts(token_ids, acts)

    def _widen_bins(self) -> None:
        """Doubles each feature's bin width until its bins reach its maximum."""
        unset = (self._bin_width == 0) & (self._max > 0)
        if unset.any():
            first = torch.exp2(torch.ceil(torch.log2(self._max[unset] / HISTOGRAM_BINS)))
            self._bin_width[unset] = first
        while True:
            short = self._max > self._bin_width * HISTOGRAM_BINS
            if not short.any():
                return
            pairs = self._histogram[short].view(-1, HISTOGRAM_BINS // 2, 2).sum(dim=2)
            self._histogram[short] = torch.cat([pairs, torch.zeros_like(pairs)], dim=1)
            self._bin_width[short] *= 2

    def _count_into_bins(self, flat: Tensor, fired: Tensor) -> None:
        token, feature = fired.nonzero(as_tuple=True)  # only the non-zero activations
        bins = (flat[token, feature] / self._bin_width[feature]).floor().long()
        slots = feature * HISTOGRAM_BINS + bins.clamp(max=HISTOGRAM_BINS - 1)
        self._histogram += torch.bincount(slots, minlength=self._histogram.numel()).view_as(
            self._histogram
        )

    def _merge_top_contexts(self, token_ids: Tensor, acts: Tensor) -> None:
        batch, length, d_sae = acts.shape
        width = 2 * self._radius + 1
        k = min(self._k, batch * length)
        values, where = acts.reshape(-1, d_sae).topk(k, dim=0)  # [k, d]
        row, peak = where // length, where % length  # [k, d]
        # Every candidate's window: positions peak - r .. peak + r of its own row.
        at = peak.unsqueeze(-1) + torch.arange(-self._radius, self._radius + 1)  # [k, d, W]
        inside = (at >= 0) & (at < length)
        flat_position = row.unsqueeze(-1) * length + at.clamp(0, length - 1)  # [k, d, W]
        features = torch.arange(d_sae).view(1, d_sae, 1)
        window_acts = acts.reshape(-1)[flat_position * d_sae + features] * inside
        window_ids = token_ids.reshape(-1)[flat_position].int().masked_fill(~inside, PAD_TOKEN)
        # Merge with what is kept, feature first: [d, k_kept + k].
        all_values = torch.cat([self._top_values, values.T], dim=1)
        all_ids = torch.cat([self._top_ids, window_ids.permute(1, 0, 2)], dim=1)
        all_acts = torch.cat([self._top_acts, window_acts.permute(1, 0, 2).half()], dim=1)
        kept_values, kept = all_values.topk(self._k, dim=1)  # [d, k]
        pick = kept.unsqueeze(-1).expand(-1, -1, width)
        self._top_values = kept_values
        self._top_ids = all_ids.gather(1, pick)
        self._top_acts = all_acts.gather(1, pick)

    def result(self) -> CorpusStatistics:
        return CorpusStatistics(
            tokens=self.tokens,
            firing_count=self._firing.clone(),
            max_activation=self._max.clone(),
            activation_sum=self._sum.clone(),
            bin_width=self._bin_width.clone(),
            histogram=self._histogram.clone(),
            top_values=self._top_values.clone(),
            top_token_ids=self._top_ids.clone(),
            top_activations=self._top_acts.clone(),
        )
