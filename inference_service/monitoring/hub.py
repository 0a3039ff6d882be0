"""The monitoring hub: fans captures out to live subscribers and records the history.

Lane side (the worker thread): `wants_capture`, `publish`. They never
wait on the event loop or on a subscriber: a frame crosses to the loop with
`call_soon_threadsafe` into the subscriber's bounded queue, and a subscriber
whose queue (counting frames still in transit) is full loses the frame, counted.

Loop side: `subscribe`, the configuration, history, statistics, export, clear,
and `reset` (from `SaeManager` when the attached SAE changes).
The subscriber list and each subscriber's wishes are immutable values swapped
by reference, so the lane reads them without locks; history and statistics sit
behind one short lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from inference_service.errors import InvalidArgumentError
from inference_service.monitoring import export as export_format
from inference_service.monitoring.statistics import (
    CaptureSummary,
    FeatureStats,
    RunningStatistics,
    check_feature_range,
)
from inference_service.monitoring.types import (
    MAX_TOP_K,
    ActivationFrame,
    Capture,
    Selection,
    validate_selection,
)

log = logging.getLogger(__name__)

DEFAULT_HISTORY_FRAMES = 2000
DEFAULT_SUBSCRIBER_QUEUE_FRAMES = 256
DEFAULT_TOP_K = 10
# A frame holds up to 128 values per token; this bounds the history's memory.
MAX_HISTORY_FRAMES = 100_000
# A failing publish is logged at most this often, not on every forward pass.
_ERROR_LOG_INTERVAL_S = 60.0


@dataclass(frozen=True)
class MonitoringConfig:
    """What the history records."""

    record_history: bool = False
    top_k: int = DEFAULT_TOP_K
    features: tuple[int, ...] = ()
    history_frames: int = DEFAULT_HISTORY_FRAMES

    @property
    def selection(self) -> Selection:
        return Selection(self.features, self.top_k)


def validate_config(config: MonitoringConfig, d_sae: int | None) -> MonitoringConfig:
    """Checks limits (feature indices only when `d_sae` is known); drops repeated features."""
    if not 1 <= config.top_k <= MAX_TOP_K:
        raise InvalidArgumentError(
            f"top_k must be between 1 and {MAX_TOP_K}; got {config.top_k}.", param="top_k"
        )
    if not 1 <= config.history_frames <= MAX_HISTORY_FRAMES:
        raise InvalidArgumentError(
            f"history_frames must be between 1 and {MAX_HISTORY_FRAMES}; "
            f"got {config.history_frames}.",
            param="history_frames",
        )
    config = replace(config, features=tuple(dict.fromkeys(config.features)))
    validate_selection(config.selection, d_sae)
    return config


class SubscriptionClosedError(Exception):
    """`Subscription.next()` after the subscription was closed."""


@dataclass(frozen=True)
class _Wanted:
    selection: Selection
    paused: bool


_CLOSED = object()


class Subscription:
    """One live subscriber: a bounded queue of frames filled from the lane.

    Create, update, read and close it on the hub's event loop.
    """

    def __init__(
        self,
        hub: MonitorHub,
        loop: asyncio.AbstractEventLoop,
        selection: Selection,
        *,
        paused: bool,
        queue_frames: int,
    ) -> None:
        self._hub = hub
        self._loop = loop
        self._queue: asyncio.Queue[ActivationFrame | object] = asyncio.Queue(queue_frames)
        self._wanted = _Wanted(selection, paused)  # read by the lane, swapped by reference
        # Guards the counters both threads change.
        self._lock = threading.Lock()
        self._dropped = 0
        self._in_flight = 0  # handed to the loop, not yet queued
        self._closed = False
        self._error: BaseException | None = None

    @property
    def selection(self) -> Selection:
        return self._wanted.selection

    @property
    def paused(self) -> bool:
        return self._wanted.paused

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def dropped(self) -> int:
        """Frames lost so far because the queue was full."""
        return self._dropped

    def update(self, selection: Selection | None, paused: bool) -> None:
        """Changes the selection (None keeps it) and pauses or resumes.

        Pausing also discards queued frames: a paused subscriber receives nothing.
        """
        if self._closed:
            return
        current = self._wanted
        self._wanted = _Wanted(selection if selection is not None else current.selection, paused)
        if paused:
            self._drain()

    async def next(self) -> tuple[ActivationFrame, int]:
        """The next frame and the frames dropped so far.

        Raises the error given to `close`, else SubscriptionClosedError, once closed.
        """
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # every later call ends the same way
            if self._error is not None:
                raise self._error
            raise SubscriptionClosedError("The subscription is closed.")
        assert isinstance(item, ActivationFrame)
        return item, self._dropped

    def __aiter__(self) -> AsyncIterator[tuple[ActivationFrame, int]]:
        return self

    async def __anext__(self) -> tuple[ActivationFrame, int]:
        try:
            return await self.next()
        except SubscriptionClosedError:
            raise StopAsyncIteration from None

    def close(self, error: BaseException | None = None) -> None:
        """Unsubscribes; a pending or later `next()` raises `error` (or ends iteration)."""
        if self._closed:
            return
        self._closed = True
        self._error = error
        self._hub._remove(self)
        self._drain()
        self._queue.put_nowait(_CLOSED)

    # Lane side.

    def _offer(self, frame_for: Callable[[Selection], ActivationFrame]) -> None:
        wanted = self._wanted
        if wanted.paused or self._closed:
            return
        with self._lock:
            # qsize() is a len() of a deque: safe to read from this thread.
            if self._queue.qsize() + self._in_flight >= self._queue.maxsize:
                self._dropped += 1
                return
            self._in_flight += 1
        handed_over = False
        try:
            frame = frame_for(wanted.selection)
            self._loop.call_soon_threadsafe(self._deliver, frame)
            handed_over = True
        except RuntimeError:
            pass  # the loop is closed: nobody is listening any more
        finally:
            if not handed_over:
                with self._lock:
                    self._in_flight -= 1

    # Loop side.

    def _deliver(self, frame: ActivationFrame) -> None:
        with self._lock:
            self._in_flight -= 1
        if self._closed or self._wanted.paused:
            return
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:  # cannot happen while in-flight frames are counted
            with self._lock:
                self._dropped += 1

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()


class MonitorHub:
    """Where captures from the lane meet live subscribers and the history."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        history_frames: int = DEFAULT_HISTORY_FRAMES,
        subscriber_queue_frames: int = DEFAULT_SUBSCRIBER_QUEUE_FRAMES,
    ) -> None:
        if subscriber_queue_frames < 1:
            raise ValueError("subscriber_queue_frames must be at least 1")
        self._loop = loop
        self._queue_frames = subscriber_queue_frames
        self._config = validate_config(MonitoringConfig(history_frames=history_frames), None)
        self._subscribers: tuple[Subscription, ...] = ()  # swapped by reference
        self._lock = threading.Lock()  # guards the fields below
        self._history: deque[ActivationFrame] = deque(maxlen=history_frames)
        self._stats: RunningStatistics | None = None
        self._d_sae: int | None = None
        self._last_error_log = float("-inf")

    # Lane side: cheap, never waits on a subscriber or the loop.

    def wants_capture(self) -> bool:
        """Whether a forward pass should encode the whole SAE and `publish` the result."""
        return self._config.record_history or any(not s.paused for s in self._subscribers)

    def publish(self, capture: Capture) -> None:
        """Records `capture` and offers it to every subscriber. Never raises."""
        try:
            self._publish(capture)
        except Exception:
            now = time.monotonic()
            if now - self._last_error_log >= _ERROR_LOG_INTERVAL_S:
                self._last_error_log = now
                log.exception("monitoring could not publish a capture; generation goes on")

    def reset(self, d_sae: int | None) -> None:
        """The SAE changed (attached, replaced or detached): forget what was recorded."""
        with self._lock:
            self._d_sae = d_sae
            self._stats = None
            self._history.clear()

    def _publish(self, capture: Capture) -> None:
        config, subscribers = self._config, self._subscribers
        d_sae = capture.activations.shape[-1]
        built: dict[Selection, ActivationFrame] = {}

        def frame_for(selection: Selection) -> ActivationFrame:
            # Subscribers with the same selection share one frame.
            selection = _fit(selection, d_sae)
            frame = built.get(selection)
            if frame is None:
                frame = built[selection] = capture.frame(selection)
            return frame

        if config.record_history:
            # Statistics describe the model, not the steering: a clamp to 80 must not
            # become the feature's observed maximum (and its suggested strength).
            summary = CaptureSummary.of(capture.unedited)  # outside the lock
            frame = frame_for(config.selection)
            with self._lock:
                if self._stats is None or self._stats.d_sae != d_sae:
                    self._stats = RunningStatistics(d_sae)
                self._stats.add(summary)
                self._history.append(frame)
                self._d_sae = d_sae
        for subscriber in subscribers:
            subscriber._offer(frame_for)

    # Loop side.

    def subscribe(self, selection: Selection, *, paused: bool = False) -> Subscription:
        subscription = Subscription(
            self, self._loop, selection, paused=paused, queue_frames=self._queue_frames
        )
        self._subscribers = (*self._subscribers, subscription)
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        self._subscribers = tuple(s for s in self._subscribers if s is not subscription)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return self._subscribers

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def config(self) -> MonitoringConfig:
        return self._config

    def set_config(self, config: MonitoringConfig, *, d_sae: int | None = None) -> MonitoringConfig:
        """Validates and applies `config`; a smaller history keeps its newest frames."""
        config = validate_config(config, d_sae)
        with self._lock:
            if config.history_frames != self._history.maxlen:
                self._history = deque(self._history, maxlen=config.history_frames)
            self._config = config
        return config

    def history(self, limit: int = 100, request_id: str = "") -> list[ActivationFrame]:
        """The newest `limit` frames (of `request_id` only, when given), oldest first."""
        if limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1; got {limit}.", param="limit")
        with self._lock:
            frames = list(self._history)
        if request_id:
            frames = [f for f in frames if f.request_id == request_id]
        return frames[-limit:]

    def statistics(
        self, features: Sequence[int] = (), limit: int = 20
    ) -> tuple[list[FeatureStats], int]:
        """Statistics of `features`, or of the `limit` most often active; and tokens recorded."""
        if not features and limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1; got {limit}.", param="limit")
        with self._lock:
            stats = self._stats.copy() if self._stats is not None else None
            d_sae = self._d_sae
        if stats is None:
            check_feature_range(features, d_sae)
            return [FeatureStats(i, 0, 0.0, 0.0, 0.0, 0.0) for i in features], 0
        chosen = list(features) if features else stats.most_active(limit)
        return stats.summarise(chosen), stats.tokens

    def export(self, format: str = "json") -> tuple[str, str]:
        """The whole history as (text, content type); `format` is "json" or "csv"."""
        export_format.content_type(format)  # an unknown format fails before any work
        with self._lock:
            frames = list(self._history)
        return export_format.export(frames, format)

    def clear(self) -> None:
        """Empties the history and its statistics."""
        with self._lock:
            self._history.clear()
            self._stats = None


def _fit(selection: Selection, d_sae: int) -> Selection:
    """Leaves out indices the current SAE lacks (chosen before it was attached)."""
    if all(i < d_sae for i in selection.features):
        return selection
    return Selection(tuple(i for i in selection.features if i < d_sae), selection.top_k)
