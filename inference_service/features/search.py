"""Which features fire on a text, and which separate two sets of texts.

Both read activations of whole texts, [positions, d_sae] each, whose first
position is already left out (zero, and not counted): its hidden state is the
attention sink, far larger than any other, as training leaves it out too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor

# AUROC compares every positive text with every negative one, feature by feature;
# features go through in chunks so the comparison stays this many elements at most.
_PAIRWISE_ELEMENTS = 1 << 24
# The suggested strength (docs/steering.md, "Finding features") is this quantile of a
# feature's non-zero activations: its typical maximum, robust to one outlier.
STRENGTH_QUANTILE = 0.99


class ContrastMeasure(StrEnum):
    AUROC = "auroc"
    FIRING_RATE_GAP = "firing_rate_gap"


@dataclass(frozen=True)
class TextHit:
    index: int
    max_activation: float
    total_activation: float
    positions: list[int]


@dataclass(frozen=True)
class ContrastHit:
    index: int
    auroc: float
    firing_rate_gap: float
    mean_positive: float
    mean_negative: float
    suggested_strength: float


def suggested_strength(nonzero_activations: Tensor) -> float:
    """The add-mode strength for a feature observed at these (non-zero) activations."""
    if nonzero_activations.numel() == 0:
        return 0.0
    return float(torch.quantile(nonzero_activations.float(), STRENGTH_QUANTILE))


def text_hits(acts: Tensor, limit: int) -> list[TextHit]:
    """acts [T, d_sae] -> the features with the largest total activation, highest first."""
    totals = acts.sum(dim=0)
    count = min(limit, int((totals > 0).sum()))
    hits = []
    for index in totals.topk(count).indices.tolist():
        column = acts[:, index]
        hits.append(
            TextHit(
                index=index,
                max_activation=float(column.max()),
                total_activation=float(totals[index]),
                positions=(column > 0).nonzero().view(-1).tolist(),
            )
        )
    return hits


def contrast(
    positives: list[Tensor], negatives: list[Tensor], measure: ContrastMeasure, limit: int
) -> list[ContrastHit]:
    """Features ranked by how well they tell the positive texts from the negative ones."""
    pos_means, pos_fired, pos_sum, pos_tokens = _summaries(positives)
    neg_means, neg_fired, neg_sum, neg_tokens = _summaries(negatives)
    auroc = _auroc(pos_means, neg_means)  # [d]
    gap = pos_fired / pos_tokens - neg_fired / neg_tokens  # [d]
    score, tie_break = (auroc, gap) if measure is ContrastMeasure.AUROC else (gap, auroc)
    # Ties (several features at AUROC 1, say) go to the better other measure.
    by_tie_break = torch.sort(tie_break, descending=True, stable=True).indices
    by_score = torch.sort(score[by_tie_break], descending=True, stable=True).indices
    order = by_tie_break[by_score][:limit]
    positive_rows = torch.cat(positives)  # [N_pos, d]
    hits = []
    for index in order.tolist():
        column = positive_rows[:, index]
        hits.append(
            ContrastHit(
                index=index,
                auroc=float(auroc[index]),
                firing_rate_gap=float(gap[index]),
                mean_positive=float(pos_sum[index] / pos_tokens),
                mean_negative=float(neg_sum[index] / neg_tokens),
                suggested_strength=suggested_strength(column[column > 0]),
            )
        )
    return hits


def _summaries(texts: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, float]:
    """Per-text mean activations [n, d], per-feature firing counts and sums [d], tokens."""
    counted = [max(t.shape[0] - 1, 1) for t in texts]  # the first position is not counted
    means = torch.stack([t.sum(dim=0) / n for t, n in zip(texts, counted, strict=True)])
    fired = torch.stack([(t > 0).sum(dim=0) for t in texts]).sum(dim=0).double()
    sums = torch.stack([t.sum(dim=0) for t in texts]).sum(dim=0).double()
    return means, fired, sums, float(sum(counted))


def _auroc(positive: Tensor, negative: Tensor) -> Tensor:
    """[n_pos, d], [n_neg, d] -> [d]: P(a positive text's score > a negative's), ties half."""
    d_sae = positive.shape[1]
    chunk = max(1, _PAIRWISE_ELEMENTS // (positive.shape[0] * negative.shape[0]))
    out = []
    for start in range(0, d_sae, chunk):
        p = positive[:, start : start + chunk].unsqueeze(1)  # [n_pos, 1, c]
        n = negative[:, start : start + chunk].unsqueeze(0)  # [1, n_neg, c]
        wins = (p > n).double() + 0.5 * (p == n).double()
        out.append(wins.mean(dim=(0, 1)))
    return torch.cat(out)
