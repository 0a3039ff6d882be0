"""Sampling math on hand-made logits: no model needed."""

from __future__ import annotations

import torch

from inference_service.engine.sampling import (
    apply_penalties,
    choose_token,
    make_generator,
    token_logprobs,
)

CPU = torch.device("cpu")


def test_penalties_follow_openai_formula() -> None:
    logits = torch.tensor([1.0, 1.0, 1.0])
    counts = torch.tensor([0, 1, 3])
    out = apply_penalties(logits, counts, frequency_penalty=0.5, presence_penalty=0.25)
    assert torch.allclose(out, torch.tensor([1.0, 1.0 - 0.5 - 0.25, 1.0 - 1.5 - 0.25]))


def test_zero_penalties_return_logits_untouched() -> None:
    logits = torch.randn(10)
    assert apply_penalties(logits, torch.ones(10), 0.0, 0.0) is logits


def test_temperature_zero_is_argmax() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    generator = make_generator(None, CPU)
    assert all(choose_token(logits, 0.0, 1.0, generator) == 1 for _ in range(20))


def test_tiny_top_p_keeps_only_the_most_likely_token() -> None:
    logits = torch.tensor([2.0, 2.1, 1.9, 0.0])
    generator = make_generator(0, CPU)
    assert {choose_token(logits, 1.0, 0.01, generator) for _ in range(50)} == {1}


def test_top_p_never_draws_outside_the_nucleus() -> None:
    # probabilities ~ [0.5, 0.3, 0.15, 0.05]: top_p=0.7 keeps tokens 0 and 1.
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    generator = make_generator(1, CPU)
    drawn = {choose_token(logits, 1.0, 0.7, generator) for _ in range(300)}
    assert drawn == {0, 1}


def test_same_seed_same_draws_and_different_seeds_differ() -> None:
    logits = torch.zeros(1000)

    def draws(seed: int | None) -> list[int]:
        generator = make_generator(seed, CPU)
        return [choose_token(logits, 1.0, 1.0, generator) for _ in range(10)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert draws(None) != draws(None)


def test_negative_and_huge_seeds_are_accepted() -> None:
    make_generator(-1, CPU)
    make_generator(2**70, CPU)


def test_logprobs_are_log_softmax_and_top_sorted() -> None:
    logits = torch.tensor([0.0, 2.0, 1.0, 3.0])
    chosen, top = token_logprobs(logits, 2, top_k=3)
    reference = torch.log_softmax(logits, dim=-1)
    assert abs(chosen - float(reference[2])) < 1e-6
    assert [i for i, _ in top] == [3, 1, 2]
    values = [lp for _, lp in top]
    assert values == sorted(values, reverse=True)
    assert token_logprobs(logits, 0, top_k=0)[1] == []


def test_draws_follow_the_distribution() -> None:
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1, 0.0]))
    generator = make_generator(3, CPU)
    draws = [choose_token(logits, 1.0, 1.0, generator) for _ in range(3000)]
    shares = [draws.count(i) / len(draws) for i in range(4)]
    assert abs(shares[0] - 0.7) < 0.04 and abs(shares[1] - 0.2) < 0.04
    assert shares[3] == 0.0  # a zero-probability token is never drawn


def test_wide_nucleus_beyond_the_first_candidates_is_exact() -> None:
    # Nearly flat over 4000 tokens: the nucleus needs far more than the first 256.
    logits = torch.linspace(0.0, 1.0, 4000)
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, _ = torch.sort(probs, descending=True)
    kept = int(((torch.cumsum(sorted_probs, 0) - sorted_probs) < 0.5).sum())
    assert kept > 256
    generator = make_generator(5, CPU)
    draws = {choose_token(logits, 1.0, 0.5, generator) for _ in range(500)}
    assert min(draws) >= 4000 - kept  # only the `kept` largest logits (the last ids)
    assert len(draws) > 256
