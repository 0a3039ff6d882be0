"""The decode loop on the real built-in model (run synchronously, no lane)."""

from __future__ import annotations

import pytest
import torch

from inference_service.engine.generation import run_generation
from inference_service.engine.types import (
    FinishedEvent,
    GenerationEvent,
    GenerationRequest,
    SamplingOptions,
    TokenEvent,
)


def generate(
    loaded, prompt_ids, **options
) -> tuple[str, list[int], list[TokenEvent], FinishedEvent]:
    events: list[GenerationEvent] = []
    request = GenerationRequest("test", tuple(prompt_ids), SamplingOptions(**options))
    run_generation(loaded, request, events.append, lambda: False)
    *tokens, finished = events
    assert isinstance(finished, FinishedEvent)
    assert all(isinstance(e, TokenEvent) for e in tokens)
    ids = [i for e in tokens for i in e.token_ids]
    return "".join(e.text for e in tokens), ids, tokens, finished


def test_greedy_answer_names_paris(loaded, chat_ids) -> None:
    text, ids, _, finished = generate(
        loaded, chat_ids("What is the capital of France?"), temperature=0.0, max_tokens=16
    )
    assert "Paris" in text
    assert finished.finish_reason == "stop"  # ended on <|im_end|>, which is not in the text
    assert "<|im_end|>" not in text
    assert finished.completion_tokens == len(ids)
    assert finished.prefill_ns > 0 and finished.decode_ns > 0


def test_greedy_loop_matches_model_generate_token_for_token(loaded, chat_ids) -> None:
    prompt = chat_ids("Write a short poem about the sea.")
    _, ours, _, finished = generate(loaded, prompt, temperature=0.0, max_tokens=16)
    assert finished.finish_reason == "length"
    input_ids = torch.tensor([prompt])
    with torch.inference_mode():
        output = loaded.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=16,
        )
    assert ours == output[0, len(prompt) :].tolist()


def test_same_seed_same_text_and_other_seeds_differ(loaded, chat_ids) -> None:
    prompt = chat_ids("Tell me a story.")

    def sample(seed: int) -> list[int]:
        return generate(loaded, prompt, temperature=1.0, seed=seed, max_tokens=6)[1]

    first = sample(11)
    assert sample(11) == first
    assert any(sample(seed) != first for seed in (12, 13))


def test_max_tokens_ends_with_length_and_exact_count(loaded, chat_ids) -> None:
    _, ids, tokens, finished = generate(
        loaded, chat_ids("Write a long essay about bread."), temperature=0.0, max_tokens=5
    )
    assert finished.finish_reason == "length"
    assert finished.completion_tokens == 5 == len(ids) == len(tokens)
    assert finished.prompt_tokens == len(chat_ids("Write a long essay about bread."))


def test_stop_string_cuts_the_text_before_it(loaded, chat_ids) -> None:
    prompt = chat_ids("List three colors.")
    full, _, _, _ = generate(loaded, prompt, temperature=0.0, max_tokens=12)
    # A stop string taken from the middle of the greedy answer, likely spanning tokens.
    stop = full[6:10]
    text, ids, _, finished = generate(
        loaded, prompt, temperature=0.0, max_tokens=12, stop=(stop, "zzzz")
    )
    assert finished.finish_reason == "stop"
    assert stop not in text
    assert text == full[: full.index(stop)]
    assert finished.completion_tokens == len(ids) < 12


def test_logprobs_and_sorted_top_logprobs(loaded, chat_ids) -> None:
    _, _, tokens, _ = generate(
        loaded,
        chat_ids("Say hello."),
        temperature=0.0,
        max_tokens=3,
        logprobs=True,
        top_logprobs=4,
    )
    for event in tokens:
        (logprob,) = event.logprobs
        assert logprob.token_id == event.token_ids[0]
        assert logprob.logprob <= 0.0
        values = [t.logprob for t in logprob.top_logprobs]
        assert len(values) == 4 and values == sorted(values, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert logprob.top_logprobs[0].token_id == logprob.token_id
        assert logprob.token_bytes.decode("utf-8", errors="replace") == logprob.token or (
            "\ufffd" in logprob.token
        )


def test_no_logprobs_unless_asked(loaded, chat_ids) -> None:
    _, _, tokens, _ = generate(loaded, chat_ids("Hi"), temperature=0.0, max_tokens=2)
    assert all(e.logprobs == () for e in tokens)


def test_cancel_between_steps(loaded, chat_ids) -> None:
    events: list[GenerationEvent] = []
    options = SamplingOptions(temperature=0.0, max_tokens=200)
    request = GenerationRequest("c", chat_ids("Write a long essay about bread."), options)
    run_generation(loaded, request, events.append, lambda: len(events) >= 3)
    finished = events[-1]
    assert isinstance(finished, FinishedEvent)
    assert finished.finish_reason == "cancelled"
    assert finished.completion_tokens == 3


def test_penalties_change_a_repetitive_greedy_answer(loaded, chat_ids) -> None:
    prompt = chat_ids("Repeat the word 'cat' ten times.")
    plain = generate(loaded, prompt, temperature=0.0, max_tokens=8)[1]
    penalised = generate(
        loaded, prompt, temperature=0.0, max_tokens=8, frequency_penalty=2.0, presence_penalty=2.0
    )[1]
    assert penalised != plain


def test_a_batch_reads_every_rows_token_back_once_per_step(loaded, chat_ids, monkeypatch) -> None:
    """Greedy, seeded sampling with and without top_p, and logprobs, decoded as one
    batch: each row's tokens equal the row alone, and each step reads the batch's
    tokens back to the host in one call (one GPU sync per step, not one per row)."""
    from inference_service.engine import generation

    options = [
        {"temperature": 0.0},
        {"temperature": 1.0, "seed": 7},
        {"temperature": 0.8, "top_p": 0.9, "seed": 3, "logprobs": True, "top_logprobs": 2},
    ]
    prompts = [chat_ids(q) for q in ("Name a colour.", "Tell me a joke.", "Count to five.")]
    alone = [
        generate(loaded, p, max_tokens=6, **o)[1:3] for p, o in zip(prompts, options, strict=True)
    ]
    reads: list[int] = []
    real_read = generation.read_tokens
    monkeypatch.setattr(generation, "read_tokens", lambda t: reads.append(len(t)) or real_read(t))
    batch = generation.DecodeBatch(loaded)
    events: list[list[GenerationEvent]] = [[] for _ in prompts]
    for p, o, out in zip(prompts, options, events, strict=True):
        request = GenerationRequest("b", tuple(p), SamplingOptions(max_tokens=6, **o))
        batch.join(request, out.append, lambda: False, pytest_fail)
    steps = 0
    while batch.rows:
        batch.step()
        steps += 1
    # One read-back per step for all the rows it decoded (a row may end early at EOS).
    assert len(reads) == steps and reads[0] == 3
    for (ids, tokens), out in zip(alone, events, strict=True):
        assert [i for e in out[:-1] for i in e.token_ids] == ids  # type: ignore[union-attr]
        # A batched pass sums in another order than a lone one: equal to ~1e-5.
        got = [lp for e in out[:-1] for lp in e.logprobs]  # type: ignore[union-attr]
        want = [lp for e in tokens for lp in e.logprobs]
        assert [lp.token_id for lp in got] == [lp.token_id for lp in want]
        assert [lp.logprob for lp in got] == pytest.approx([lp.logprob for lp in want], abs=1e-3)
        assert [[t.token_id for t in lp.top_logprobs] for lp in got] == [
            [t.token_id for t in lp.top_logprobs] for lp in want
        ]


def test_greedy_rows_take_one_argmax_together(loaded, chat_ids, monkeypatch) -> None:
    from inference_service.engine import generation

    calls: list[tuple[int, ...]] = []
    real = generation.greedy_tokens
    monkeypatch.setattr(
        generation,
        "greedy_tokens",
        lambda logits: calls.append(tuple(logits.shape)) or real(logits),
    )
    batch = generation.DecodeBatch(loaded)
    for q in ("Hi", "Hello there"):
        request = GenerationRequest("g", chat_ids(q), SamplingOptions(0.0, max_tokens=3))
        batch.join(request, lambda e: None, lambda: False, pytest_fail)
    batch.step()
    assert calls == [(2, loaded.model.config.vocab_size)]


def pytest_fail(exc: BaseException) -> None:
    raise AssertionError("the batch failed") from exc
