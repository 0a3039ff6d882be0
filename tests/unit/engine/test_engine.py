"""The engine's async face: admission, the lane, cancellation, embeddings, failures."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from inference_service.engine import generation as generation_module
from inference_service.engine.types import (
    ChatTurn,
    FinishedEvent,
    GenerationRequest,
    SamplingOptions,
    TokenEvent,
)
from inference_service.errors import (
    ContextLengthExceededError,
    InvalidArgumentError,
    NoModelLoadedError,
    QueueFullError,
)

LONG = SamplingOptions(temperature=0.0, max_tokens=200)


def request(
    chat_ids, text: str = "Write a long essay about bread.", **options
) -> GenerationRequest:
    sampling = SamplingOptions(**options) if options else LONG
    return GenerationRequest("req", chat_ids(text), sampling)


async def collect(handle) -> tuple[str, FinishedEvent]:
    text = ""
    async for event in handle.events():
        if isinstance(event, TokenEvent):
            text += event.text
        else:
            return text, event
    raise AssertionError("no FinishedEvent")


async def first_token(handle) -> None:
    events = handle.events()
    assert isinstance(await anext(events), TokenEvent)
    return events


async def test_generation_through_the_lane(make_engine, chat_ids) -> None:
    engine = make_engine()
    handle = engine.submit_generation(
        request(chat_ids, "What is the capital of France?", temperature=0.0, max_tokens=12)
    )
    assert handle.prompt_tokens == len(chat_ids("What is the capital of France?"))
    text, finished = await collect(handle)
    assert "Paris" in text
    assert finished.queue_ns > 0
    assert engine.queue_depth == 0


async def test_validation_runs_before_admission(make_engine, chat_ids) -> None:
    engine = make_engine()
    with pytest.raises(InvalidArgumentError) as caught:
        engine.submit_generation(request(chat_ids, temperature=3.0))
    assert caught.value.param == "temperature"
    with pytest.raises(ContextLengthExceededError) as caught:
        engine.submit_generation(request(chat_ids, max_tokens=10_000))
    assert caught.value.param == "max_tokens"
    with pytest.raises(InvalidArgumentError) as caught:
        engine.submit_generation(GenerationRequest("e", (), SamplingOptions()))
    assert caught.value.param == "messages"
    with pytest.raises(InvalidArgumentError) as caught:
        await engine.render_chat_async([ChatTurn("wizard", "hi")])
    assert caught.value.param == "messages"
    assert engine.queue_depth == 0


async def test_default_max_tokens_applies(make_engine, chat_ids) -> None:
    engine = make_engine(default_max_tokens=3)
    _, finished = await collect(engine.submit_generation(request(chat_ids, temperature=0.0)))
    assert (finished.finish_reason, finished.completion_tokens) == ("length", 3)


async def test_queue_full_while_the_lane_is_busy(make_engine, chat_ids) -> None:
    # A batch of one: the second request must wait, not join the running batch
    # between two decode steps (it did, now and then, and then it was not waiting).
    engine = make_engine(max_queue=2, max_batch_size=1)
    running = engine.submit_generation(request(chat_ids))
    events = await first_token(running)
    waiting = engine.submit_generation(request(chat_ids))
    assert engine.queue_depth == 2
    with pytest.raises(QueueFullError) as caught:
        engine.submit_generation(request(chat_ids))
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s >= 1
    assert "queue is full" in caught.value.message and "retry" in caught.value.message
    with pytest.raises(QueueFullError):
        await engine.embed([[1, 2, 3]])

    # A request cancelled while waiting never runs and frees its slot at once.
    waiting.cancel()
    assert engine.queue_depth == 1
    _, finished = await collect(waiting)
    assert (finished.finish_reason, finished.completion_tokens) == ("cancelled", 0)

    await events.aclose()  # the consumer leaving cancels the running request
    for _ in range(100):
        if engine.queue_depth == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.queue_depth == 0


async def test_cancel_mid_generation_stops_within_a_step(make_engine, chat_ids) -> None:
    engine = make_engine()
    handle = engine.submit_generation(request(chat_ids))
    seen = 0
    async for event in handle.events():
        if isinstance(event, TokenEvent):
            seen += 1
            if seen == 3:
                handle.cancel()
        else:
            finished = event
    assert finished.finish_reason == "cancelled"
    # Tokens already in flight when cancel() ran, plus at most one more step.
    assert finished.completion_tokens < 10
    assert engine.queue_depth == 0


async def test_consumer_task_cancelled_cancels_the_request(make_engine, chat_ids) -> None:
    engine = make_engine()
    handle = engine.submit_generation(request(chat_ids))

    async def consume() -> None:
        async for _ in handle.events():
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if engine.queue_depth == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.queue_depth == 0


async def test_embeddings_are_normalised_and_deterministic(make_engine) -> None:
    engine = make_engine()
    inputs = [
        await engine.encode_text_async("The cat sat on the mat."),
        await engine.encode_text_async("Stock prices"),
    ]
    first = await engine.embed(inputs)
    again = await engine.embed(list(reversed(inputs)))
    assert len(first) == 2 and all(len(v) == engine.description.hidden_size for v in first)
    for vector in first:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-5)
    # Each input is embedded alone, so order and neighbours do not matter.
    assert first == list(reversed(again))
    assert first[0] != first[1]


async def test_embedding_input_errors(make_engine) -> None:
    engine = make_engine()
    with pytest.raises(InvalidArgumentError) as caught:
        await engine.embed([])
    assert caught.value.param == "input"
    with pytest.raises(InvalidArgumentError):
        await engine.embed([[1], []])
    too_long = [1] * (engine.description.max_context_tokens + 1)
    with pytest.raises(ContextLengthExceededError):
        await engine.embed([too_long])


async def test_out_of_memory_reaches_the_request_and_the_lane_survives(
    make_engine, chat_ids, monkeypatch
) -> None:
    engine = make_engine()
    real = generation_module.SequenceState.prefill
    calls = []

    def failing_once(self, *args):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("simulated")
        return real(self, *args)

    monkeypatch.setattr(generation_module.SequenceState, "prefill", failing_once)
    with pytest.raises(torch.OutOfMemoryError):
        await collect(engine.submit_generation(request(chat_ids, temperature=0.0, max_tokens=2)))
    assert engine.queue_depth == 0
    assert engine.lane_thread.is_alive()
    _, finished = await collect(
        engine.submit_generation(request(chat_ids, temperature=0.0, max_tokens=2))
    )
    assert finished.completion_tokens == 2


async def test_shutdown_cancels_waiting_work_and_stops_the_thread(make_engine, chat_ids) -> None:
    engine = make_engine()
    running = engine.submit_generation(request(chat_ids))
    events = await first_token(running)
    waiting = engine.submit_generation(request(chat_ids))
    engine.shutdown()
    # Both end as cancelled: the waiting one (or newly joined), and the one decoding.
    _, finished = await collect(waiting)
    assert finished.finish_reason == "cancelled"
    rest = [event async for event in events]
    assert isinstance(rest[-1], FinishedEvent) and rest[-1].finish_reason == "cancelled"
    assert rest[-1].completion_tokens < 200
    assert not engine.lane_thread.is_alive()
    assert engine.queue_depth == 0
    with pytest.raises(NoModelLoadedError):
        engine.submit_generation(request(chat_ids))


async def test_token_strings_and_encoding_need_no_lane(make_engine) -> None:
    engine = make_engine()
    ids = await engine.encode_text_async("Hello world", add_special_tokens=False)
    assert "".join(await engine.token_strings_async(ids)) == "Hello world"


async def test_call_on_lane_runs_on_the_worker_thread(make_engine) -> None:
    import threading

    engine = make_engine()
    assert await engine.call_on_lane(threading.current_thread) is engine.lane_thread

    def boom() -> None:
        raise ValueError("bad hook")

    with pytest.raises(ValueError, match="bad hook"):
        await engine.call_on_lane(boom)
    assert await engine.call_on_lane(lambda: 42) == 42


async def test_a_shutdown_during_a_decode_step_still_ends_every_stream(
    make_engine, chat_ids, monkeypatch
) -> None:
    engine = make_engine()
    real_step = generation_module.DecodeBatch.step
    steps = []

    def step_then_shut_down(self) -> int:
        generated = real_step(self)
        steps.append(generated)
        if len(steps) == 3:  # after the step's own cancellation check: no step ends them
            engine.shutdown()
        return generated

    monkeypatch.setattr(generation_module.DecodeBatch, "step", step_then_shut_down)
    handles = [
        engine.submit_generation(request(chat_ids, temperature=0.0, max_tokens=50))
        for _ in range(2)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(collect(h) for h in handles)), 60)
    assert [f.finish_reason for _, f in results] == ["cancelled", "cancelled"]
    assert engine.queue_depth == 0


async def test_a_failing_batch_loop_fails_its_rows_and_serves_the_next_requests(
    make_engine, chat_ids, monkeypatch
) -> None:
    from inference_service.engine import scheduler as scheduler_module

    engine = make_engine(max_batch_size=1)  # the second request waits while the loop fails
    real = scheduler_module.BatchScheduler._record_step
    calls = []

    def failing_once(self, tokens: int) -> None:
        calls.append(tokens)
        if len(calls) == 2:
            raise RuntimeError("scheduler bug")
        real(self, tokens)

    monkeypatch.setattr(scheduler_module.BatchScheduler, "_record_step", failing_once)
    first = engine.submit_generation(request(chat_ids, temperature=0.0, max_tokens=20))
    second = engine.submit_generation(request(chat_ids, temperature=0.0, max_tokens=3))
    with pytest.raises(RuntimeError, match="scheduler bug"):
        await collect(first)
    _, finished = await asyncio.wait_for(collect(second), 60)
    assert finished.completion_tokens == 3 and engine.queue_depth == 0
