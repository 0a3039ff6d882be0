"""Continuous batching on the real model: N requests decoded together give each one
exactly what it gets alone, with its own sampling, stop, logprobs, steering and
monitoring; cancelling one leaves the others alone; admission and the KV budget
hold; newcomers join a running batch."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import jsonschema
import pytest
import torch

from inference_service.engine.engine import Engine
from inference_service.engine.prompts import render_chat
from inference_service.engine.types import (
    ChatTurn,
    FinishedEvent,
    GenerationRequest,
    JsonSchema,
    SamplingOptions,
    TokenEvent,
)
from inference_service.errors import (
    ContextLengthExceededError,
    ProfileNotFoundError,
    QueueFullError,
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

SITE = HookSite(10, "resid_post")  # mid-model: steered rows go through batched attention after
D_SAE = 64

PROMPTS = [
    "Tell me about the sea.",
    "What is the capital of France? Answer in one sentence, then explain why it matters.",
    "Hi",
    "List three fruits.",
    "Write a long essay about bread, starting with its history in ancient Egypt and Rome.",
    "Count from one to ten.",
    "Why is the sky blue?",
    "Describe a cat in the style of a weather report.",
]
MAX_TOKENS = [14, 20, 9, 16, 24, 6, 18, 12]
STOPS: list[tuple[str, ...]] = [(), (".",), (), ("\n",), (), (), (",",), ()]


def steering(row: int) -> SteeringChoice | None:
    """A different steering on every row (None: no observer at all)."""
    features = {
        1: (SteeringFeature(7, "add", 8.0),),
        2: (SteeringFeature(2, "clamp", 4.0),),
        3: (SteeringFeature(2, "multiply", 0.5), SteeringFeature(3, "add", 6.0)),
        4: (SteeringFeature(11, "add", -9.0),),
        7: (SteeringFeature(7, "add", 16.0),),
    }
    if row in features:
        return SteeringChoice("features", steering=SteeringSet(features[row]))
    return FOLLOW_GLOBAL if row == 5 else None


@dataclass
class Outcome:
    ids: list[int]
    text: str
    finish: str
    logprobs: list[tuple[int, float, tuple[int, ...]]]
    activations: list[tuple[int, tuple[tuple[int, float], ...]]]
    first_token_at: float = 0.0
    finished_at: float = 0.0


def _no_profiles(name: str) -> SteeringSet:
    raise ProfileNotFoundError(f"No profile '{name}'.")


@pytest.fixture
async def rig(loaded, settings):
    b_enc = torch.zeros(D_SAE)
    b_enc[2] = 50.0  # feature 2 is active everywhere, so clamp and multiply do something
    sae = orthonormal_sae(d_sae=D_SAE, hook_name=SITE.hook_name, b_enc=b_enc)
    engine = Engine(loaded, settings.model_copy(update={"max_batch_size": 8}))
    attachments = SaeAttachments()
    attachment, _ = await attachments.attach(
        engine, find_decoder_layers(loaded.model), "sae-test", SITE, lambda device: sae
    )
    active = active_sae(sae, hook=attachment.hook)
    runtime = SteeringRuntime(SteeringState(lambda: active), _no_profiles)
    yield engine, runtime
    await attachments.detach(engine, SITE)
    engine.shutdown()


def make_request(loaded, runtime, row: int, *, steered: bool = True) -> GenerationRequest:
    prompt = tuple(render_chat(loaded.tokenizer, [ChatTurn("user", PROMPTS[row])]))
    choice = steering(row) if steered else None
    observer = None
    if choice is not None:
        selection = Selection(top_k=3) if row == 5 else Selection()
        observer = runtime.context(f"r{row}", "generate", choice, selection, _texts)
    sampling = SamplingOptions(
        temperature=0.0,
        max_tokens=MAX_TOKENS[row],
        stop=STOPS[row],
        logprobs=row % 3 == 0,
        top_logprobs=2 if row % 3 == 0 else 0,
    )
    return GenerationRequest(f"r{row}", prompt, sampling, observer=observer)


def _texts(ids) -> list[str]:
    return [str(i) for i in ids]


async def outcome(handle) -> Outcome:
    result = Outcome([], "", "", [], [])
    loop = asyncio.get_running_loop()
    async for event in handle.events():
        if isinstance(event, TokenEvent):
            result.first_token_at = result.first_token_at or loop.time()
            result.ids.extend(event.token_ids)
            result.text += event.text
            result.logprobs += [
                (lp.token_id, lp.logprob, tuple(t.token_id for t in lp.top_logprobs))
                for lp in event.logprobs
            ]
            result.activations += [
                (a.position, tuple((f.index, round(f.value, 3)) for f in a.top))
                for a in event.activations
            ]
        else:
            assert isinstance(event, FinishedEvent)
            result.finish = event.finish_reason
            result.finished_at = loop.time()
    return result


async def run_alone(engine: Engine, request: GenerationRequest) -> Outcome:
    return await outcome(engine.submit_generation(request))


def assert_same(batched: Outcome, alone: Outcome, row: int) -> None:
    assert batched.ids == alone.ids, row
    assert (batched.text, batched.finish) == (alone.text, alone.finish), row
    assert [(t, top) for t, _, top in batched.logprobs] == [
        (t, top) for t, _, top in alone.logprobs
    ]
    for (_, a, _), (_, b, _) in zip(batched.logprobs, alone.logprobs, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert batched.activations == alone.activations, row


@pytest.mark.parametrize("n", [1, 2, 8])
async def test_concurrent_greedy_outputs_equal_each_request_alone(rig, loaded, n) -> None:
    engine, runtime = rig
    alone = [
        await outcome(engine.submit_generation(make_request(loaded, runtime, r))) for r in range(n)
    ]
    handles = [engine.submit_generation(make_request(loaded, runtime, r)) for r in range(n)]
    batched = await asyncio.gather(*(outcome(h) for h in handles))
    for row in range(n):
        assert_same(batched[row], alone[row], row)
    if n == 8:
        for _ in range(100):  # the stats follow the lane a moment after the last event
            if engine.batch_stats().active == 0:
                break
            await asyncio.sleep(0.02)
        assert engine.batch_stats().active == 0
        assert {o.finish for o in batched} == {"stop", "length"}  # stops and limits both ran
        assert any(o.activations for o in batched)  # row 5 monitored
        # The steering really acts: a steered row differs from the same prompt unsteered.
        plain = await outcome(
            engine.submit_generation(make_request(loaded, runtime, 7, steered=False))
        )
        assert plain.ids != batched[7].ids


async def test_cancelling_one_request_leaves_the_others_unchanged(rig, loaded) -> None:
    engine, runtime = rig
    rows = [0, 1, 4, 6]
    alone = {
        r: await outcome(engine.submit_generation(make_request(loaded, runtime, r))) for r in rows
    }
    handles = {r: engine.submit_generation(make_request(loaded, runtime, r)) for r in rows}

    async def cancel_after_three(handle) -> list[int]:
        ids = []
        async for event in handle.events():
            if isinstance(event, TokenEvent):
                ids.extend(event.token_ids)
                if len(ids) == 3:
                    handle.cancel()
            else:
                assert event.finish_reason == "cancelled"
        return ids

    cut, *others = await asyncio.gather(
        cancel_after_three(handles[4]), *(outcome(handles[r]) for r in (0, 1, 6))
    )
    assert cut == alone[4].ids[: len(cut)] and 3 <= len(cut) < len(alone[4].ids)
    for r, result in zip((0, 1, 6), others, strict=True):
        assert_same(result, alone[r], r)


async def test_a_full_queue_refuses_and_every_accepted_request_completes(make_engine, chat_ids):
    engine = make_engine(max_queue=3, max_batch_size=2)
    accepted, refused = [], 0
    for i in range(5):
        request = GenerationRequest(
            f"q{i}", chat_ids(PROMPTS[i]), SamplingOptions(temperature=0.0, max_tokens=6)
        )
        try:
            accepted.append(engine.submit_generation(request))
        except QueueFullError as exc:
            refused += 1
            assert exc.retry_after_s >= 1
    assert (len(accepted), refused) == (3, 2)
    results = await asyncio.gather(*(outcome(h) for h in accepted))
    assert all(r.finish == "length" and len(r.ids) == 6 for r in results)
    assert engine.queue_depth == 0


async def test_a_newcomer_joins_a_running_batch(make_engine, chat_ids) -> None:
    engine = make_engine()
    long = engine.submit_generation(
        GenerationRequest("long", chat_ids(PROMPTS[4]), SamplingOptions(0.0, max_tokens=60))
    )
    events = long.events()
    assert isinstance(await anext(events), TokenEvent)  # the long one is decoding
    seen_active: list[int] = []

    async def rest_of_long() -> float:
        async for event in events:
            seen_active.append(engine.batch_stats().active)
            if isinstance(event, FinishedEvent):
                return asyncio.get_running_loop().time()
        raise AssertionError

    short = engine.submit_generation(
        GenerationRequest("short", chat_ids(PROMPTS[2]), SamplingOptions(0.0, max_tokens=4))
    )
    long_done, short_result = await asyncio.gather(rest_of_long(), outcome(short))
    assert short_result.finished_at < long_done  # it did not wait for the long one
    assert max(seen_active) == 2
    stats = engine.batch_stats()
    assert stats.tokens_per_s > 0 and 0 < stats.occupancy <= 1
    assert stats.max_batch_size == 16  # the default


async def test_the_kv_budget_refuses_what_never_fits_and_queues_what_fits_later(
    make_engine, chat_ids, loaded
) -> None:
    engine = make_engine(kv_cache_mb=4)
    assert engine.batch_stats().kv_cache_budget_bytes == 4 * 2**20
    budget_tokens = 4 * 2**20 // engine._scheduler.kv_bytes_per_token
    prompt = chat_ids(PROMPTS[2])
    fits_alone = budget_tokens - len(prompt) - 5  # two of these do not fit together
    assert fits_alone > 10
    with pytest.raises(ContextLengthExceededError, match="MILLM_KV_CACHE_MB") as caught:
        engine.submit_generation(
            GenerationRequest("big", prompt, SamplingOptions(0.0, max_tokens=budget_tokens))
        )
    assert caught.value.param == "max_tokens"
    first, second = (
        engine.submit_generation(
            GenerationRequest(name, prompt, SamplingOptions(0.0, max_tokens=fits_alone))
        )
        for name in ("first", "second")
    )
    a, b = await asyncio.gather(outcome(first), outcome(second))
    assert b.first_token_at >= a.finished_at  # it waited for the first one's memory
    assert a.ids == b.ids


async def test_a_grammar_masks_the_steered_logits_row_by_row(rig, loaded) -> None:
    """The same JSON Schema on a steered and an unsteered row decoding together: both
    replies validate, steering still changes what is written inside the grammar, and
    each row equals its run alone."""
    engine, runtime = rig
    schema = {
        "type": "object",
        "properties": {"animal": {"type": "string", "maxLength": 16}, "legs": {"type": "integer"}},
        "required": ["animal", "legs"],
    }
    grammar = await engine.compile_grammar_async(
        JsonSchema(json.dumps(schema)), param="response_format"
    )
    prompt = tuple(render_chat(loaded.tokenizer, [ChatTurn("user", "Name an animal as JSON.")]))
    sampling = SamplingOptions(temperature=0.0, max_tokens=30)

    def request(steered: bool) -> GenerationRequest:
        choice = SteeringChoice(
            "features", steering=SteeringSet((SteeringFeature(7, "add", 16.0),))
        )
        observer = (
            runtime.context("g", "generate", choice, Selection(), _texts) if steered else None
        )
        return GenerationRequest("g", prompt, sampling, observer=observer, grammar=grammar)

    alone = [await run_alone(engine, request(steered)) for steered in (True, False)]
    together = await asyncio.gather(
        *(outcome(engine.submit_generation(request(steered))) for steered in (True, False))
    )
    assert [o.text for o in together] == [o.text for o in alone]
    for result in together:
        assert result.finish == "stop", result.text
        jsonschema.validate(json.loads(result.text), schema)
    assert together[0].text != together[1].text
