"""The streaming accumulator against a direct computation over the whole corpus."""

from __future__ import annotations

import math

import torch

from inference_service.features.search import ContrastMeasure, contrast, text_hits
from inference_service.features.statistics import (
    HISTOGRAM_BINS,
    PAD_TOKEN,
    StatisticsAccumulator,
)
from inference_service.features.store import StatisticsSource, StatisticsStore


def _corpus(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Batches of token ids [2, 12] and sparse activations [2, 12, 6] that grow: later
    batches reach higher maxima, so the histogram must re-bin on the way."""
    generator = torch.Generator().manual_seed(seed)
    ids, acts = [], []
    for batch in range(5):
        a = torch.rand(2, 12, 6, generator=generator) * (batch + 1) ** 2
        a[a < 0.5 * (batch + 1)] = 0  # sparse
        ids.append(torch.randint(0, 1000, (2, 12), generator=generator))
        acts.append(a)
    return ids, acts


def _accumulate(ids, acts, k=3, radius=2):
    accumulator = StatisticsAccumulator(6, top_k=k, radius=radius)
    for i, a in zip(ids, acts, strict=True):
        accumulator.add(i, a)
    return accumulator.result()


def test_counts_max_and_mean_equal_a_direct_computation():
    ids, acts = _corpus()
    stats = _accumulate(ids, acts)
    flat = torch.cat([a.reshape(-1, 6) for a in acts])
    assert stats.tokens == flat.shape[0]
    assert torch.equal(stats.firing_count, (flat > 0).sum(0))
    assert torch.equal(stats.max_activation, flat.amax(0))
    mean = flat.sum(0) / (flat > 0).sum(0)
    assert torch.allclose(stats.mean_nonzero(), mean)


def test_the_rebinned_histogram_equals_one_binned_with_the_final_width():
    ids, acts = _corpus()
    stats = _accumulate(ids, acts)
    flat = torch.cat([a.reshape(-1, 6) for a in acts])
    for f in range(6):
        width = float(stats.bin_width[f])
        assert width * HISTOGRAM_BINS >= float(stats.max_activation[f]) > width * 16
        values = flat[:, f][flat[:, f] > 0]
        bins = (values / width).floor().long().clamp(max=HISTOGRAM_BINS - 1)
        assert torch.equal(stats.histogram[f], torch.bincount(bins, minlength=HISTOGRAM_BINS))


def test_quantiles_are_within_one_bin_of_the_exact_ones():
    ids, acts = _corpus()
    stats = _accumulate(ids, acts)
    flat = torch.cat([a.reshape(-1, 6) for a in acts])
    approx = stats.quantiles()
    for f in range(6):
        values = flat[:, f][flat[:, f] > 0]
        # The order statistic of rank ceil(q * n): the value the histogram's bin holds.
        ranks = [math.ceil(q * len(values)) - 1 for q in (0.5, 0.9, 0.99)]
        exact = values.sort().values[ranks]
        assert (approx[f] - exact).abs().max() <= stats.bin_width[f] + 1e-6


def test_top_contexts_are_the_strongest_with_their_windows():
    ids, acts = _corpus()
    stats = _accumulate(ids, acts, k=3, radius=2)
    all_ids = torch.cat(ids)  # [10, 12]
    all_acts = torch.cat(acts)  # [10, 12, 6]
    for f in range(6):
        column = all_acts[..., f].reshape(-1)
        best = column.topk(3)
        assert torch.equal(stats.top_values[f], best.values)
        row, peak = divmod(int(best.indices[0]), 12)
        window = [
            all_ids[row, t].item() if 0 <= t < 12 else PAD_TOKEN for t in range(peak - 2, peak + 3)
        ]
        assert stats.top_token_ids[f, 0].tolist() == window
        expected = [
            all_acts[row, t, f].item() if 0 <= t < 12 else 0.0 for t in range(peak - 2, peak + 3)
        ]
        assert torch.allclose(
            stats.top_activations[f, 0].float(), torch.tensor(expected), rtol=1e-3
        )


def test_the_store_writes_and_reads_back_one_feature(tmp_path):
    ids, acts = _corpus()
    stats = _accumulate(ids, acts)
    store = StatisticsStore(tmp_path)
    store.save("ab" * 32, stats, StatisticsSource("c", "m", "blocks.9.hook_resid_post"))
    whole = store.load("ab" * 32)
    one = store.load_feature("ab" * 32, 4)
    assert whole is not None and one is not None and whole.tokens == stats.tokens
    assert torch.equal(whole.histogram, stats.histogram)
    assert torch.equal(one.top_token_ids[0], stats.top_token_ids[4])
    assert torch.equal(one.quantiles()[0], stats.quantiles()[4])
    assert store.load("cd" * 32) is None
    assert [p.name for p in store.path("ab" * 32).parent.iterdir()] == [store.path("ab" * 32).name]


def test_text_hits_rank_by_total_activation_with_positions():
    acts = torch.zeros(5, 4)
    acts[1, 2], acts[3, 2] = 1.0, 2.0
    acts[2, 0] = 2.5
    hits = text_hits(acts, 10)
    assert [(h.index, h.total_activation, h.positions) for h in hits] == [
        (2, 3.0, [1, 3]),
        (0, 2.5, [2]),
    ]


def test_contrast_ranks_the_separating_feature_first():
    positives = [torch.tensor([[0.0, 0.0], [3.0, 0.2], [1.0, 0.2]]) for _ in range(3)]
    negatives = [torch.tensor([[0.0, 0.0], [0.0, 0.3], [0.0, 0.3]]) for _ in range(3)]
    [first, second] = contrast(positives, negatives, ContrastMeasure.AUROC, 2)
    assert (first.index, first.auroc, first.firing_rate_gap) == (0, 1.0, 1.0)
    assert second.auroc == 0.0 and first.mean_positive == 2.0 and first.mean_negative == 0.0
    assert 2.9 < first.suggested_strength <= 3.0  # its 0.99 quantile on the positives
    [by_gap] = contrast(positives, negatives, ContrastMeasure.FIRING_RATE_GAP, 1)
    assert by_gap.index == 0
