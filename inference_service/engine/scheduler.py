"""Continuous batching: which generations decode together, and when newcomers join.

Admitted generations wait here in arrival order. One lane job, the batch loop,
runs while there is work: before every decode step it lets waiting generations
join (each is prefilled alone and emits its first token at once) while the batch
has room, then steps every active sequence together. So a newcomer waits for at
most the decode step in flight plus the prefills ahead of it, never for another
request to finish, unless the batch is full (`max_batch_size`) or the KV cache
it would need does not fit the budget; then it joins as soon as a sequence
leaves. A request whose cache alone exceeds the budget is refused when admitted.

Between decode steps the loop also hands the lane over when other lane work
waits (an embedding, say): it re-queues itself behind that work and carries on.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from inference_service.engine.generation import DecodeBatch
from inference_service.engine.lane import JobState, Lane, LaneJob
from inference_service.engine.loader import LoadedModel
from inference_service.engine.prefix_cache import NO_PREFIX_CACHE, PrefixCache
from inference_service.engine.types import FinishedEvent, GenerationEvent, GenerationRequest

# Seconds of decode history behind the tokens/s and occupancy figures.
_RATE_WINDOW_S = 10.0


@dataclass(frozen=True)
class BatchStats:
    """What the batch is doing, for GetServerInfo and the bridge."""

    waiting: int  # admitted generations not decoding yet
    active: int  # sequences in the batch now
    max_batch_size: int
    occupancy: float  # mean batch size / max_batch_size over the recent decode steps
    tokens_per_s: float  # generated tokens per second over the recent window
    kv_cache_bytes: int  # worst case the active sequences have reserved
    kv_cache_budget_bytes: int
    kv_cache_used_bytes: int = 0  # what the batch's cache holds now (rows x columns)


@dataclass(eq=False)
class _Waiting:
    job: LaneJob
    request: GenerationRequest
    emit: Callable[[GenerationEvent], None]
    final_length: int


class BatchScheduler:
    def __init__(
        self,
        loaded: LoadedModel,
        lane: Lane,
        between_passes: Callable[[], None],
        *,
        max_batch_size: int,
        kv_bytes_per_token: int,
        kv_budget_bytes: int,
        on_step: Callable[[int], None] = lambda rows: None,
        prefixes: PrefixCache = NO_PREFIX_CACHE,
    ) -> None:
        self._loaded = loaded
        self._lane = lane
        self._between_passes = between_passes
        self._on_step = on_step
        self.max_batch_size = max_batch_size
        self.kv_bytes_per_token = kv_bytes_per_token
        self.kv_budget_bytes = kv_budget_bytes
        self._lock = threading.Lock()
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._looping = False  # a batch-loop job is queued or running
        self._prefixes = prefixes
        self._batch = DecodeBatch(loaded, prefixes)
        self._active = 0
        self._reserved = 0
        self._used = 0
        # (monotonic time, batch size) of recent decode steps; tokens = batch size.
        self._steps: collections.deque[tuple[float, int]] = collections.deque()

    # ---- from the event loop -------------------------------------------------------

    def reserved_bytes(self, final_lengths: list[int]) -> int:
        """KV cache a batch of sequences reaching these lengths needs at its largest:
        rows are left-padded to the longest one."""
        return len(final_lengths) * max(final_lengths, default=0) * self.kv_bytes_per_token

    def submit(
        self,
        job: LaneJob,
        request: GenerationRequest,
        emit: Callable[[GenerationEvent], None],
        final_length: int,
    ) -> None:
        """Queues an admitted generation; `job` is its admission ticket (cancel, slot)."""
        with self._lock:
            self._waiting.append(_Waiting(job, request, emit, final_length))
            if self._looping:
                return
            self._looping = True
        self._lane.submit(self._loop_job())

    def stats(self) -> BatchStats:
        now = time.monotonic()
        with self._lock:
            waiting = sum(1 for w in self._waiting if w.job.state is JobState.WAITING)
            steps = [size for at, size in self._steps if now - at <= _RATE_WINDOW_S]
            span = now - self._steps[0][0] if self._steps else 0.0
            active, reserved, used = self._active, self._reserved, self._used
        return BatchStats(
            waiting=waiting,
            active=active,
            max_batch_size=self.max_batch_size,
            occupancy=(sum(steps) / len(steps) / self.max_batch_size) if steps else 0.0,
            tokens_per_s=sum(steps) / max(span, 1.0) if steps else 0.0,
            kv_cache_bytes=reserved,
            kv_cache_budget_bytes=self.kv_budget_bytes,
            kv_cache_used_bytes=used,
        )

    # ---- on the lane ------------------------------------------------------------------

    def _loop_job(self) -> LaneJob:
        return LaneJob(self._loop, on_error=self._crashed, on_skip=self._stopped, on_done=_nothing)

    def _loop(self, job: LaneJob) -> None:
        batch = self._batch
        while True:
            self._between_passes()
            self._join_waiting()
            if not batch.rows:
                with self._lock:
                    if not self._waiting:
                        self._looping = False
                        self._active = self._reserved = self._used = 0
                        return
                continue
            self._record_step(batch.step())
            if self._lane.has_waiting():
                # Other lane work (an embedding, a hook change) goes first; the
                # batch resumes right behind it.
                self._lane.submit(self._loop_job())
                return

    def _join_waiting(self) -> None:
        batch = self._batch
        while True:
            with self._lock:
                while self._waiting and self._waiting[0].job.state is not JobState.WAITING:
                    self._waiting.popleft()  # cancelled while it waited: already answered
                if not self._waiting or len(batch.rows) >= self._capacity():
                    return
                nxt = self._waiting[0]
                lengths = [*batch.final_lengths, nxt.final_length]
                if batch.rows and self.reserved_bytes(lengths) > self.kv_budget_bytes:
                    return  # joins when a sequence leaves and frees its share
                self._waiting.popleft()
            if not nxt.job.start():
                continue
            self._between_passes()
            batch.join(
                nxt.request,
                _finishing(nxt.job, nxt.emit),
                nxt.job.is_cancelled,
                nxt.job.fail,
                queue_ns=nxt.job.queue_ns,
            )
            self._publish()

    def _capacity(self) -> int:
        return self.max_batch_size if self._batch.batchable else 1

    def _record_step(self, tokens: int) -> None:
        if tokens:
            self._on_step(tokens)
        now = time.monotonic()
        with self._lock:
            self._steps.append((now, tokens))
            while self._steps and now - self._steps[0][0] > _RATE_WINDOW_S:
                self._steps.popleft()
        self._publish()

    def _publish(self) -> None:
        lengths = self._batch.final_lengths
        used = self._batch.cache_tokens * self.kv_bytes_per_token
        with self._lock:
            self._active = len(lengths)
            self._reserved = self.reserved_bytes(lengths)
            self._used = used

    def _crashed(self, exc: BaseException) -> None:
        """The loop itself failed (not a forward pass, which fails only its rows): its
        sequences get the error, and those still waiting get a fresh loop."""
        rows, self._batch = self._batch.rows, DecodeBatch(self._loaded, self._prefixes)
        for row in rows:
            row.on_error(exc)
        self._publish()
        with self._lock:
            self._looping = bool(self._waiting)
        if self._looping:
            self._lane.submit(self._loop_job())

    def _stopped(self) -> None:
        """The lane stopped before the loop ran again. Admission has cancelled every
        ticket; sequences still in the batch end here, since no step will end them."""
        with self._lock:
            self._looping = False
        self._batch.cancel_all()
        self._publish()


def _finishing(
    job: LaneJob, emit: Callable[[GenerationEvent], None]
) -> Callable[[GenerationEvent], None]:
    def send(event: GenerationEvent) -> None:
        if isinstance(event, FinishedEvent):
            job.finish()  # the slot is free before the caller sees the end
        emit(event)

    return send


def _nothing() -> None:
    pass
