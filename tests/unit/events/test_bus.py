"""The event bus on a real event loop: order, resume, overflow, threads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from inference_service.events import Event, EventBus, Resync, ResyncReason


def _drain(subscription) -> list[Event]:
    events = []
    while not subscription._queue.empty():
        events.append(subscription._queue.get_nowait())
    return events


async def test_every_watcher_gets_every_event_in_order_with_increasing_sequences():
    bus = EventBus(asyncio.get_running_loop(), first_sequence=100)
    first, second = bus.subscribe(), bus.subscribe()
    for payload in ("a", "b", "c"):
        bus.publish(payload)
    for subscription in (first, second):
        got = [await subscription.next() for _ in range(3)]
        assert [(e.sequence, e.payload) for e in got] == [(100, "a"), (101, "b"), (102, "c")]
    assert bus.last_sequence == 102


async def test_default_sequences_start_at_the_time_in_microseconds_below_2_to_the_53():
    before = time.time_ns() // 1000
    bus = EventBus(asyncio.get_running_loop())
    bus.publish("x")
    assert before <= bus.last_sequence <= time.time_ns() // 1000
    assert bus.last_sequence < 2**53


async def test_resume_replays_only_later_buffered_events():
    bus = EventBus(asyncio.get_running_loop(), first_sequence=1)
    for payload in "abcde":
        bus.publish(payload)
    resumed = bus.subscribe(after_sequence=3)
    bus.publish("f")
    assert [(e.sequence, e.payload) for e in _drain(resumed)] == [(4, "d"), (5, "e"), (6, "f")]
    current = bus.subscribe(after_sequence=6)
    assert _drain(current) == []


async def test_a_cursor_older_than_the_buffer_starts_with_a_resync():
    bus = EventBus(asyncio.get_running_loop(), buffer_events=3, first_sequence=1)
    for payload in "abcdef":  # 1..6; 4, 5, 6 stay buffered
        bus.publish(payload)
    events = _drain(bus.subscribe(after_sequence=2))
    assert events[0].payload == Resync(ResyncReason.CURSOR_TOO_OLD)
    assert events[0].sequence == 3  # the last one lost: the cursor a client may keep
    assert [(e.sequence, e.payload) for e in events[1:]] == [(4, "d"), (5, "e"), (6, "f")]


async def test_a_cursor_from_before_a_restart_starts_with_a_resync():
    old = EventBus(asyncio.get_running_loop())
    old.publish("before")
    await asyncio.sleep(0.001)
    new = EventBus(asyncio.get_running_loop())  # the restarted service
    new.publish("after")
    events = _drain(new.subscribe(after_sequence=old.last_sequence))
    assert [e.payload for e in events] == [Resync(ResyncReason.CURSOR_TOO_OLD), "after"]
    # and a cursor ahead of anything published (a clock that went back) likewise
    ahead = _drain(old.subscribe(after_sequence=old.last_sequence + 50))
    assert [e.payload for e in ahead] == [Resync(ResyncReason.CURSOR_TOO_OLD), "before"]


async def test_a_slow_watcher_never_blocks_publishers_and_is_told_to_resync():
    bus = EventBus(asyncio.get_running_loop(), subscriber_queue_events=4, first_sequence=1)
    slow, fast = bus.subscribe(), bus.subscribe()
    started = time.perf_counter()
    for n in range(1000):
        bus.publish(n)
        await fast.next()  # the fast one keeps up
    assert time.perf_counter() - started < 1.0
    events = _drain(slow)
    assert len(events) <= 4
    assert events[0].payload == Resync(ResyncReason.SUBSCRIBER_LAGGED)
    assert slow.lagged > 0 and fast.lagged == 0
    # After the resync it follows the newest events, in order.
    assert [e.payload for e in events[1:]] == list(range(1000 - len(events) + 1, 1000))
    bus.publish("next")
    assert (await slow.next()).payload == "next"


async def test_publish_from_threads_keeps_one_order_for_everyone():
    bus = EventBus(asyncio.get_running_loop(), subscriber_queue_events=10_000, first_sequence=1)
    first, second = bus.subscribe(), bus.subscribe()

    def publish_many(tag: str) -> None:
        for n in range(200):
            bus.publish((tag, n))

    threads = [threading.Thread(target=publish_many, args=(tag,)) for tag in "xyz"]
    for thread in threads:
        thread.start()
    await asyncio.to_thread(lambda: [t.join() for t in threads])
    got_first = [await first.next() for _ in range(600)]
    got_second = [await second.next() for _ in range(600)]
    assert [e.sequence for e in got_first] == list(range(1, 601))
    assert [e.payload for e in got_first] == [e.payload for e in got_second]
    for tag in "xyz":  # each thread's own events stay in its order
        assert [e.payload[1] for e in got_first if e.payload[0] == tag] == list(range(200))


async def test_closing_ends_iteration_and_unsubscribes():
    bus = EventBus(asyncio.get_running_loop())
    subscription = bus.subscribe()
    assert bus.subscriber_count == 1

    async def collect() -> list[object]:
        return [e.payload async for e in subscription]

    task = asyncio.create_task(collect())
    bus.publish("one")
    await asyncio.sleep(0)
    subscription.close()
    assert await asyncio.wait_for(task, 1) == ["one"]
    assert bus.subscriber_count == 0
    bus.publish("ignored")  # nobody left: nothing to do, nothing raised


def test_bad_sizes_are_refused():
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError):
            EventBus(loop, buffer_events=0)
        with pytest.raises(ValueError):
            EventBus(loop, subscriber_queue_events=1)
    finally:
        loop.close()
