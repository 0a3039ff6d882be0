"""Prefix caching on the real model: reusing a kept prompt start gives the tokens and
logits of a full prefill, never crosses steering, and monitored prompts are still
captured whole. Plus the cache's own bookkeeping (LRU, budget, covering entries)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch
from transformers import DynamicCache

from inference_service.engine.engine import Engine
from inference_service.engine.generation import SequenceState
from inference_service.engine.prefix_cache import (
    MIN_REUSED_TOKENS,
    PLAIN,
    PrefixCache,
    _common_prefix,
    prefix_key,
)
from inference_service.engine.prompts import render_chat
from inference_service.engine.row_edits import RowEdit
from inference_service.engine.types import (
    ChatTurn,
    FinishedEvent,
    GenerationRequest,
    SamplingOptions,
    TokenEvent,
)
from inference_service.monitoring.types import Selection
from inference_service.sae.attachments import SaeAttachments
from inference_service.sae.hook_sites import HookSite, find_decoder_layers
from inference_service.steering.runtime import SteeringRuntime
from inference_service.steering.state import SteeringState
from inference_service.steering.types import (
    FOLLOW_GLOBAL,
    SteeringChoice,
    SteeringFeature,
    SteeringSet,
)
from tests.fixtures.saes import active_sae, orthonormal_sae

SYSTEM = "You are a terse assistant who answers in one sentence about geography."
QUESTIONS = [
    "What is the capital of France?",
    "Name a river in Egypt.",
    "Which ocean is the largest?",
    "What is the capital of France? Explain why.",
]
SITE = HookSite(10, "resid_post")
NOTHING = Selection()


def chat(loaded, question: str) -> tuple[int, ...]:
    turns = [ChatTurn("system", SYSTEM), ChatTurn("user", question)]
    return tuple(render_chat(loaded.tokenizer, turns))


def greedy(prompt: tuple[int, ...], rid: str, observer=None, max_tokens: int = 12):
    sampling = SamplingOptions(temperature=0.0, max_tokens=max_tokens)
    return GenerationRequest(rid, prompt, sampling, observer=observer)


async def run(engine: Engine, request: GenerationRequest):
    ids: list[int] = []
    positions: list[int] = []
    finished = None
    async for event in engine.submit_generation(request).events():
        if isinstance(event, TokenEvent):
            ids.extend(event.token_ids)
            positions.extend(a.position for a in event.activations)
        else:
            assert isinstance(event, FinishedEvent)
            finished = event
    assert finished is not None
    return ids, finished.cached_tokens, positions


def test_a_reused_prefix_gives_the_logits_of_a_full_prefill(loaded) -> None:
    cache = PrefixCache(64 * 2**20)
    first = SequenceState(loaded, greedy(chat(loaded, QUESTIONS[0]), "a"))
    with torch.inference_mode():
        first.prefill(cache)
        assert first.cached_tokens == 0 and cache.stats().entries == 1
        for question in QUESTIONS[1:]:
            prompt = chat(loaded, question)
            reused = SequenceState(loaded, greedy(prompt, "b"))
            fresh = SequenceState(loaded, greedy(prompt, "c"))
            got, want = reused.prefill(cache), fresh.prefill()
            shared = _common_prefix(chat(loaded, QUESTIONS[0]), prompt)
            assert reused.cached_tokens == min(shared, len(prompt) - 1) >= 20
            assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
            assert got.argmax() == want.argmax()
            # The request's cache holds the whole prompt, and the same keys and values.
            assert reused.cache is not None and fresh.cache is not None
            for mine, theirs in zip(reused.cache.layers, fresh.cache.layers, strict=True):
                assert mine.keys.shape == theirs.keys.shape
                assert torch.allclose(mine.keys, theirs.keys, atol=1e-4)
    # The last question starts with the first one's whole prompt but its final
    # `<|im_end|>`; an exact repeat reuses all but its last token.
    repeat = SequenceState(loaded, greedy(chat(loaded, QUESTIONS[0]), "d"))
    with torch.inference_mode():
        repeat.prefill(cache)
    assert repeat.cached_tokens == len(chat(loaded, QUESTIONS[0])) - 1
    assert cache.stats().hits == len(QUESTIONS)


async def test_greedy_tokens_are_the_same_with_the_cache_on_and_off(make_engine, loaded) -> None:
    on, off = make_engine(), make_engine(prefix_cache_mb=0)
    for index, question in enumerate(QUESTIONS):
        prompt = chat(loaded, question)
        with_cache, cached, _ = await run(on, greedy(prompt, f"on{index}"))
        without, none, _ = await run(off, greedy(prompt, f"off{index}"))
        assert with_cache == without, question
        assert none == 0
        assert (cached > 0) == (index > 0), (index, cached)  # the first one fills the cache
    assert on.prefix_cache_stats().hits == len(QUESTIONS) - 1
    assert off.prefix_cache_stats().entries == 0


@pytest.fixture
async def steered(loaded, settings):
    """Two engines (prefix cache on and off) sharing one attached SAE and one
    steering state, so each request runs under identical steering on both."""
    sae = orthonormal_sae(d_sae=64, hook_name=SITE.hook_name)
    on = Engine(loaded, settings)
    off = Engine(loaded, settings.model_copy(update={"prefix_cache_mb": 0}))
    attachments = SaeAttachments()
    attachment, _ = await attachments.attach(
        on, find_decoder_layers(loaded.model), "sae-test", SITE, lambda device: sae
    )
    active = active_sae(sae, hook=attachment.hook)
    state = SteeringState(lambda: active)
    runtime = SteeringRuntime(state, _no_profiles)
    yield on, off, runtime, state
    await attachments.detach(on, SITE)
    on.shutdown()
    off.shutdown()


def _no_profiles(name: str) -> SteeringSet:
    raise AssertionError(name)


async def test_a_steered_prefix_serves_only_the_same_steering(steered, loaded) -> None:
    on, off, runtime, state = steered
    prompt = chat(loaded, QUESTIONS[0])
    add = SteeringChoice("features", steering=SteeringSet((SteeringFeature(7, "add", 50.0),)))
    clamp = SteeringChoice("features", steering=SteeringSet((SteeringFeature(3, "clamp", 30.0),)))

    async def both(rid: str, choice: SteeringChoice | None, selection: Selection = NOTHING):
        def observer(prefix: str):
            if choice is None:
                return None
            return runtime.context(prefix + rid, "generate", choice, selection, _texts)

        got = await run(on, greedy(prompt, "on" + rid, observer("on")))
        want = await run(off, greedy(prompt, "off" + rid, observer("off")))
        assert got[0] == want[0], rid
        assert want[1] == 0
        return got

    plain, cached, _ = await both("plain", None)
    assert cached == 0
    steered_ids, cached, _ = await both("add", add)
    assert cached == 0  # the plain prompt's entry is not this steering's
    assert steered_ids != plain  # the steering acts
    assert (await both("add-again", add))[1] == len(prompt) - 1  # the same compiled set
    assert (await both("clamp", clamp))[1] == 0
    # Global steering: each change compiles a new set, so nothing stale is reused.
    state.set_live([SteeringFeature(7, "add", 50.0)])
    first, cached, _ = await both("global-1", FOLLOW_GLOBAL)
    assert cached == 0 and first == steered_ids
    state.set_live([SteeringFeature(7, "add", -50.0)])
    second, cached, _ = await both("global-2", FOLLOW_GLOBAL)
    assert cached == 0 and second != first
    assert (await both("global-3", FOLLOW_GLOBAL))[1] == len(prompt) - 1
    state.clear()  # back to the identity: the plain prompt's entry serves again
    assert (await both("cleared", FOLLOW_GLOBAL))[0:2] == (plain, len(prompt) - 1)
    # A monitored prompt is encoded whole: no reuse, a frame for every prompt position.
    ids, cached, positions = await both("monitored", add, Selection(top_k=3))
    assert (ids, cached) == (steered_ids, 0)
    assert positions[: len(prompt)] == list(range(len(prompt)))


def _texts(ids) -> list[str]:
    return [str(i) for i in ids]


def _cache(tokens: int, layers: int = 2, fill: float = 0.0) -> DynamicCache:
    cache = DynamicCache()
    for index in range(layers):
        kv = torch.full((1, 2, tokens, 4), fill)
        cache.update(kv, kv.clone(), index)
    return cache


def test_the_cache_keeps_to_its_budget_least_recently_used_first() -> None:
    per_token = 2 * 2 * 2 * 4 * 4  # layers x (k, v) x heads x dims x float32 bytes
    cache = PrefixCache(per_token * 40)
    a, b, c = tuple(range(16)), tuple(range(100, 116)), tuple(range(200, 216))
    cache.store(PLAIN, a, _cache(16, fill=1.0))
    cache.store(PLAIN, b, _cache(16, fill=2.0))
    assert cache.restore(PLAIN, (*a, 99), DynamicCache()) == 16  # a is now the newest
    cache.store(PLAIN, c, _cache(16, fill=3.0))  # 48 tokens > 40: b goes
    stats = cache.stats()
    assert (stats.entries, stats.bytes) == (2, 32 * per_token)
    assert cache.restore(PLAIN, (*b, 1), DynamicCache()) == 0
    restored = DynamicCache()
    assert cache.restore(PLAIN, (*c[:10], 7, 7), restored) == 10
    assert restored.layers[0].keys.shape[-2] == 10 and restored.layers[0].keys.eq(3.0).all()
    # A prompt that starts with a kept one replaces it; one it starts with is kept already.
    cache.store(PLAIN, (*a, 5, 6), _cache(18))
    assert cache.stats().entries == 2 and cache.stats().bytes == 34 * per_token
    cache.store(PLAIN, a, _cache(16))
    assert cache.stats().entries == 2
    # Too short to be worth it, or larger than the whole budget: not kept.
    cache.store(PLAIN, tuple(range(MIN_REUSED_TOKENS - 1)), _cache(MIN_REUSED_TOKENS - 1))
    cache.store(PLAIN, tuple(range(500, 541)), _cache(41))
    assert cache.stats().entries == 2
    assert PrefixCache(0).enabled is False


def test_keys_follow_the_edit_and_die_with_it() -> None:
    hook = object.__new__(type("Hook", (), {}))
    vector = torch.ones(4)
    key, reusable = prefix_key(RowEdit(hook, add=vector))
    assert reusable and key != PLAIN and key.alive
    assert prefix_key(RowEdit(hook, add=vector))[0].value == key.value
    assert prefix_key(RowEdit(hook, add=torch.ones(4)))[0].value != key.value
    # Observing alone leaves the hidden states plain, but that prefill may not reuse.
    assert prefix_key(RowEdit(hook, observe=lambda before, after: None)) == (PLAIN, False)
    assert prefix_key(None) == (PLAIN, True)

    @dataclasses.dataclass(frozen=True)
    class LaterEdit(RowEdit):
        scale: float | None = None  # a field the key does not know

    assert prefix_key(LaterEdit(hook, add=vector, scale=2.0)) == (None, False)
    assert prefix_key(LaterEdit(hook, add=vector))[0] == key
    cache = PrefixCache(2**20)
    tokens = tuple(range(20))
    cache.store(key, tokens, _cache(20))
    assert cache.restore(PLAIN, tokens, DynamicCache()) == 0
    assert cache.restore(key, tokens, DynamicCache()) == 19
    del vector
    assert not key.alive
    assert cache.restore(key, tokens, DynamicCache()) == 0
    assert cache.stats().entries == 0  # the stale entry went at once


async def test_concurrent_requests_sharing_a_prefix(make_engine, loaded) -> None:
    """Newcomers reuse the prefix while others decode; outputs match the cache off."""
    on, off = make_engine(), make_engine(prefix_cache_mb=0)
    prompts = [chat(loaded, q) for q in QUESTIONS]
    await run(on, greedy(prompts[0], "warm"))
    got = await asyncio.gather(*(run(on, greedy(p, f"c{i}")) for i, p in enumerate(prompts)))
    want = await asyncio.gather(*(run(off, greedy(p, f"d{i}")) for i, p in enumerate(prompts)))
    assert [g[0] for g in got] == [w[0] for w in want]
    assert all(g[1] >= 20 for g in got)


def test_the_cache_is_on_only_with_plain_weights(loaded, settings):
    for quantization, enabled in (
        ("int8_dynamic", False),
        ("bnb_8bit", False),
        ("bnb_4bit", False),
        ("int4_weight", False),
        ("int8_weight", False),
        ("none", True),
    ):
        extra = {**loaded.description.extra, "quantization": quantization}
        description = dataclasses.replace(loaded.description, extra=extra)
        engine = Engine(dataclasses.replace(loaded, description=description), settings)
        try:
            assert engine.prefix_cache_stats().budget_bytes == (64 * 2**20 if enabled else 0)
        finally:
            engine.shutdown()
