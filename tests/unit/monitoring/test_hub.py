"""The monitoring hub with real tensors, a real event loop and a real lane-like thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from inference_service.errors import InvalidArgumentError
from inference_service.monitoring.hub import MonitorHub, MonitoringConfig, SubscriptionClosedError
from inference_service.monitoring.types import Selection
from tests.unit.monitoring.helpers import make_capture, sparse_activations

D_SAE = 96


def recording(hub: MonitorHub, **changes) -> MonitoringConfig:
    return hub.set_config(
        MonitoringConfig(**{"record_history": True, "history_frames": 2000, **changes}),
        d_sae=D_SAE,
    )


async def on_lane(fn, *args) -> None:
    """Runs `fn` on another thread, the way the worker lane calls the hub."""
    await asyncio.to_thread(fn, *args)


async def nothing_arrives(subscription, wait_s: float = 0.1) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(subscription.next(), wait_s)


@pytest.fixture
async def hub() -> MonitorHub:
    return MonitorHub(asyncio.get_running_loop(), history_frames=2000, subscriber_queue_frames=8)


async def test_statistics_equal_a_direct_computation_over_the_captured_tensors(hub):
    recording(hub)
    captures = [sparse_activations(t, D_SAE, seed=s) for s, t in enumerate((5, 1, 17, 9))]
    captures.append(torch.zeros(2, D_SAE))  # a pass where nothing fired
    captures[2][:, 4] = 0.0
    for acts in captures:
        acts[:, 11] = -1.0  # only negative: never active
    for n, acts in enumerate(captures):
        await on_lane(hub.publish, make_capture(acts, f"r{n}"))

    everything = torch.cat(captures)  # [N, d_sae]
    active = everything > 0
    features = [0, 4, 11, 57, D_SAE - 1]
    stats, tokens = hub.statistics(features, limit=20)

    assert tokens == everything.shape[0] == 34
    assert [s.index for s in stats] == features
    for s in stats:
        column, on = everything[:, s.index], active[:, s.index]
        assert s.count == int(on.sum())
        assert s.fraction_active == pytest.approx(int(on.sum()) / 34)
        if s.count:
            assert s.min == pytest.approx(float(column[on].min()))
            assert s.max == pytest.approx(float(column[on].max()))
            assert s.mean == pytest.approx(float(column[on].double().mean()))
        else:
            assert (s.min, s.max, s.mean) == (0.0, 0.0, 0.0)
    assert stats[2].count == 0  # feature 11 held only negative values


async def test_empty_features_give_the_most_often_active_first(hub):
    recording(hub)
    acts = sparse_activations(40, D_SAE, seed=3)
    await on_lane(hub.publish, make_capture(acts))

    stats, _ = hub.statistics([], limit=5)

    counts = (acts > 0).sum(dim=0)
    expected = sorted(range(D_SAE), key=lambda i: (-int(counts[i]), i))[:5]
    assert [s.index for s in stats] == expected
    assert [s.count for s in stats] == [int(counts[i]) for i in expected]


async def test_nothing_is_recorded_while_history_is_off(hub):
    subscription = hub.subscribe(Selection(top_k=3))
    await on_lane(hub.publish, make_capture(sparse_activations(4, D_SAE, seed=0)))

    await asyncio.wait_for(subscription.next(), 1)  # subscribers still get frames
    assert hub.history() == []
    stats, tokens = hub.statistics([1, 2])
    assert tokens == 0
    assert [(s.index, s.count) for s in stats] == [(1, 0), (2, 0)]


async def test_history_is_bounded_oldest_first_and_filtered(hub):
    recording(hub, history_frames=3)
    for n in range(5):
        await on_lane(hub.publish, make_capture(sparse_activations(2, D_SAE, seed=n), f"r{n}"))

    assert [f.request_id for f in hub.history(limit=100)] == ["r2", "r3", "r4"]
    assert [f.request_id for f in hub.history(limit=2)] == ["r3", "r4"]
    assert [f.request_id for f in hub.history(request_id="r3")] == ["r3"]
    assert hub.history(request_id="r0") == []

    recording(hub, history_frames=2)  # shrinking keeps the newest
    assert [f.request_id for f in hub.history()] == ["r3", "r4"]
    recording(hub, history_frames=10)
    await on_lane(hub.publish, make_capture(sparse_activations(2, D_SAE, seed=9), "r5"))
    assert [f.request_id for f in hub.history()] == ["r3", "r4", "r5"]


async def test_history_frames_carry_the_configured_features_and_top_k(hub):
    recording(hub, features=(7, 2), top_k=3)
    acts = sparse_activations(4, D_SAE, seed=1)
    await on_lane(hub.publish, make_capture(acts, first_position=10))

    [frame] = hub.history()
    values, indices = torch.topk(acts, 3, dim=-1)
    for row, token in enumerate(frame.tokens):
        assert token.position == 10 + row
        assert [f.index for f in token.features] == [7, 2]
        assert [f.value for f in token.features] == pytest.approx(acts[row, [7, 2]].tolist())
        pairs = zip(indices[row].tolist(), values[row].tolist(), strict=True)
        wanted = [(i, v) for i, v in pairs if v > 0]
        assert [(f.index, f.value) for f in token.top] == wanted


async def test_each_subscriber_gets_its_own_selection(hub):
    first = hub.subscribe(Selection((5, 1)))
    second = hub.subscribe(Selection(top_k=2))
    acts = sparse_activations(3, D_SAE, seed=2)
    await on_lane(hub.publish, make_capture(acts, "x"))

    one, dropped = await asyncio.wait_for(first.next(), 1)
    two, _ = await asyncio.wait_for(second.next(), 1)

    assert dropped == 0
    assert one.request_id == two.request_id == "x"
    assert [[f.index for f in t.features] for t in one.tokens] == [[5, 1]] * 3
    assert all(t.top == () for t in one.tokens)
    assert all(t.features == () for t in two.tokens)
    top_indices = torch.topk(acts, 2, dim=-1).indices.tolist()
    for row, token in enumerate(two.tokens):
        assert [f.index for f in token.top] == top_indices[row][: len(token.top)]

    first.update(Selection((9,)), paused=False)
    await on_lane(hub.publish, make_capture(acts, "y"))
    later, _ = await asyncio.wait_for(first.next(), 1)
    assert [f.index for f in later.tokens[0].features] == [9]


async def test_pause_stops_frames_and_resume_brings_only_later_ones(hub):
    subscription = hub.subscribe(Selection(top_k=1))
    assert hub.wants_capture()
    await on_lane(hub.publish, make_capture(sparse_activations(1, D_SAE, seed=0), "queued"))
    await asyncio.sleep(0.01)

    subscription.update(None, paused=True)  # also discards the queued frame
    assert not hub.wants_capture()
    await on_lane(hub.publish, make_capture(sparse_activations(1, D_SAE, seed=1), "paused"))
    await nothing_arrives(subscription)
    assert subscription.dropped == 0  # paused frames are not losses

    subscription.update(None, paused=False)
    assert subscription.selection == Selection(top_k=1)
    await on_lane(hub.publish, make_capture(sparse_activations(1, D_SAE, seed=2), "after"))
    frame, _ = await asyncio.wait_for(subscription.next(), 1)
    assert frame.request_id == "after"


async def test_wants_capture_follows_history_and_subscribers(hub):
    assert not hub.wants_capture()
    recording(hub)
    assert hub.wants_capture()
    hub.set_config(MonitoringConfig(record_history=False))
    subscription = hub.subscribe(Selection(top_k=1), paused=True)
    assert not hub.wants_capture()
    subscription.close()
    assert hub.subscriber_count == 0


async def test_a_slow_subscriber_loses_frames_and_publish_never_waits(hub):
    loop = asyncio.get_running_loop()
    hub = MonitorHub(loop, subscriber_queue_frames=4)
    slow = hub.subscribe(Selection((1, 2), top_k=5))  # never read until the end
    capture = make_capture(sparse_activations(8, 512, seed=4))
    calls = 2000
    spent: list[float] = []

    def lane() -> None:
        for _ in range(calls):
            start = time.perf_counter()
            hub.publish(capture)
            spent.append(time.perf_counter() - start)

    thread = threading.Thread(target=lane)
    thread.start()
    thread.join(60)  # blocks the event loop on purpose: the lane must not notice
    assert not thread.is_alive()

    mean_s = sum(spent) / len(spent)
    assert mean_s < 2e-3, f"publish took {mean_s * 1e3:.3f} ms on average"
    await asyncio.sleep(0.01)  # the loop now delivers what was in transit
    received = [await asyncio.wait_for(slow.next(), 1) for _ in range(4)]
    await nothing_arrives(slow)
    assert received[-1][1] == slow.dropped == calls - 4


async def test_publishing_to_a_closed_loop_is_ignored():
    loop = asyncio.new_event_loop()
    hub = MonitorHub(loop)
    subscription = hub.subscribe(Selection(top_k=2))
    loop.close()

    capture = make_capture(sparse_activations(2, D_SAE, seed=0))
    for _ in range(300):  # more than the queue holds
        hub.publish(capture)  # does not raise

    # Frames that never reached the loop do not count against the queue.
    assert subscription.dropped == 0


async def test_close_ends_iteration_and_can_carry_an_error(hub):
    ended = hub.subscribe(Selection(top_k=1))
    waiting = asyncio.create_task(anext(aiter(ended), None))
    await asyncio.sleep(0)
    ended.close()
    assert await asyncio.wait_for(waiting, 1) is None
    with pytest.raises(SubscriptionClosedError):
        await ended.next()

    failed = hub.subscribe(Selection(top_k=1))
    failed.close(InvalidArgumentError("bad"))
    with pytest.raises(InvalidArgumentError):
        await failed.next()
    assert hub.subscriber_count == 0


async def test_reset_forgets_and_frames_skip_indices_the_new_sae_lacks(hub):
    recording(hub, features=(3,))
    subscription = hub.subscribe(Selection((3, 70), top_k=1))
    await on_lane(hub.publish, make_capture(sparse_activations(2, D_SAE, seed=0)))
    await asyncio.wait_for(subscription.next(), 1)

    hub.reset(64)
    assert hub.history() == []
    assert hub.statistics([3])[1] == 0
    with pytest.raises(InvalidArgumentError, match="0 to 63"):
        hub.statistics([64])

    await on_lane(hub.publish, make_capture(sparse_activations(2, 64, seed=1)))
    frame, _ = await asyncio.wait_for(subscription.next(), 1)
    assert [f.index for f in frame.tokens[0].features] == [3]  # 70 is left out, nothing fails
    assert hub.statistics([3])[1] == 2


async def test_clear_empties_history_and_statistics(hub):
    recording(hub)
    await on_lane(hub.publish, make_capture(sparse_activations(3, D_SAE, seed=0)))
    assert hub.history() and hub.statistics([0])[1] == 3

    hub.clear()

    assert hub.history() == []
    assert hub.statistics([0])[1] == 0


@pytest.mark.parametrize(
    ("config", "text"),
    [
        (MonitoringConfig(top_k=65), "top_k must be between 1 and 64"),
        (MonitoringConfig(top_k=0), "top_k must be between 1 and 64"),
        (MonitoringConfig(features=tuple(range(65))), "At most 64 features"),
        (MonitoringConfig(features=(D_SAE,)), f"0 to {D_SAE - 1}"),
        (MonitoringConfig(history_frames=0), "history_frames"),
    ],
)
async def test_bad_configs_are_invalid_arguments(hub, config, text):
    with pytest.raises(InvalidArgumentError, match=text):
        hub.set_config(config, d_sae=D_SAE)
    assert hub.config == MonitoringConfig()


async def test_bad_reads_are_invalid_arguments(hub):
    recording(hub)
    await on_lane(hub.publish, make_capture(sparse_activations(2, D_SAE, seed=0)))
    with pytest.raises(InvalidArgumentError, match=f"0 to {D_SAE - 1}"):
        hub.statistics([D_SAE])
    with pytest.raises(InvalidArgumentError, match="'xml'"):
        hub.export("xml")
    with pytest.raises(InvalidArgumentError):
        hub.history(limit=0)
