"""The event bus: numbers state changes, keeps the recent ones, fans them out to watchers.

Publishers are the domain packages, handed `bus.publish` as a plain callable; the
payloads are their own frozen dataclasses, which this package never imports (the
gRPC adapter converts them). `publish` may be called from any thread: off the event
loop it crosses with `call_soon_threadsafe`, so sequences are assigned, buffered and
delivered on the loop alone, in one order for every watcher.

A watcher has a bounded queue. One that falls behind never blocks a publisher (the
monitoring hub's rule): its queue is emptied and replaced by one `Resync` marker,
telling it to re-read the state. Resuming with `after` replays the buffered events
after it; when some of those are gone (or predate a restart), a `Resync` comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

DEFAULT_BUFFER_EVENTS = 1024
DEFAULT_SUBSCRIBER_QUEUE_EVENTS = 256


class ResyncReason(enum.Enum):
    CURSOR_TOO_OLD = "cursor_too_old"
    SUBSCRIBER_LAGGED = "subscriber_lagged"


@dataclass(frozen=True)
class Resync:
    """Events were lost to this watcher: re-read the state, then follow the events."""

    reason: ResyncReason


@dataclass(frozen=True)
class Event:
    sequence: int
    occurred_at_unix_ms: int
    payload: object  # a domain package's event dataclass, or `Resync`


_CLOSED = object()


class EventSubscription:
    """One watcher's bounded queue; create, read and close it on the bus's loop."""

    def __init__(self, bus: EventBus, queue_events: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event | object] = asyncio.Queue(queue_events)
        self._closed = False
        self.lagged = 0  # times this watcher fell behind and lost events

    def _offer(self, event: Event) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            # Drop what it has not read: a Resync says the same in one event.
            self.lagged += 1
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(
                Event(
                    event.sequence,
                    event.occurred_at_unix_ms,
                    Resync(ResyncReason.SUBSCRIBER_LAGGED),
                )
            )

    async def next(self) -> Event | None:
        """The next event; None once closed."""
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)
            return None
        assert isinstance(item, Event)
        return item

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        event = await self.next()
        if event is None:
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bus._remove(self)
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_CLOSED)


class EventBus:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        buffer_events: int = DEFAULT_BUFFER_EVENTS,
        subscriber_queue_events: int = DEFAULT_SUBSCRIBER_QUEUE_EVENTS,
        first_sequence: int | None = None,
    ) -> None:
        """Sequences start at `first_sequence`, by default the time in Unix microseconds:
        a cursor from before a restart is then older than anything buffered, and a
        sequence stays below 2**53 (exact in JavaScript) for two more centuries."""
        if buffer_events < 1 or subscriber_queue_events < 2:
            raise ValueError("buffer_events must be >= 1 and subscriber_queue_events >= 2")
        self._loop = loop
        self._queue_events = subscriber_queue_events
        self._next = first_sequence if first_sequence is not None else time.time_ns() // 1000
        self._first = self._next
        self._buffer: deque[Event] = deque(maxlen=buffer_events)
        self._subscribers: tuple[EventSubscription, ...] = ()

    @property
    def last_sequence(self) -> int:
        """The newest event's sequence; one less than the first before any event."""
        return self._next - 1

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, payload: object) -> None:
        """Numbers `payload` and hands it to every watcher; any thread, never blocks."""
        occurred_at_unix_ms = time.time_ns() // 1_000_000
        if _running_loop() is self._loop:
            self._publish(payload, occurred_at_unix_ms)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody watches
            self._loop.call_soon_threadsafe(self._publish, payload, occurred_at_unix_ms)

    def _publish(self, payload: object, occurred_at_unix_ms: int) -> None:
        event = Event(self._next, occurred_at_unix_ms, payload)
        self._next += 1
        self._buffer.append(event)
        for subscriber in self._subscribers:
            subscriber._offer(event)

    def subscribe(self, after_sequence: int = 0) -> EventSubscription:
        """A watcher of the events after `after_sequence` (0: from the next one).

        Call on the loop: replay and registration happen without a publish in between.
        """
        subscription = EventSubscription(self, self._queue_events)
        if after_sequence:
            oldest = self._buffer[0].sequence if self._buffer else self._next
            if after_sequence + 1 < oldest or after_sequence >= self._next:
                # Lost: evicted from the buffer, or a cursor from another run of the service.
                marker = Event(
                    oldest - 1, time.time_ns() // 1_000_000, Resync(ResyncReason.CURSOR_TOO_OLD)
                )
                subscription._offer(marker)
                after_sequence = oldest - 1
            for event in self._buffer:
                if event.sequence > after_sequence:
                    subscription._offer(event)
        self._subscribers = (*self._subscribers, subscription)
        return subscription

    def _remove(self, subscription: EventSubscription) -> None:
        self._subscribers = tuple(s for s in self._subscribers if s is not subscription)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
