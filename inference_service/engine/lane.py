"""The worker lane: one daemon thread that runs every model forward pass in order.

Torch work never runs on the event loop, and never on two threads at once, so
hooks and steering can change between forward passes without locks around the
model. Jobs are cancellable until they start; a running job polls its own
cancel flag between decode steps.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class JobState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"


class LaneJob:
    """One unit of lane work with exactly-once completion callbacks.

    `body` does the work; `on_error` receives what it raised; `on_skip` runs if
    the job is cancelled (or the lane stops) before it starts; `on_done` runs
    once whatever happened: when the body calls `release()` (just before it
    hands out its final result, so a caller that saw the result finds its slot
    already free), else before `on_error`/`on_skip`, else when the body returns.
    """

    def __init__(
        self,
        body: Callable[[LaneJob], None],
        *,
        on_error: Callable[[BaseException], None],
        on_skip: Callable[[], None],
        on_done: Callable[[], None],
    ) -> None:
        self._body = body
        self._on_error = on_error
        self._on_skip = on_skip
        self._on_done = on_done
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self.state = JobState.WAITING
        self._released = False
        self.enqueued_ns = time.perf_counter_ns()
        self.started_ns = 0
        self.queue_ns = 0

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stops the job: a waiting job never runs, a running one stops at its next check."""
        self._cancelled.set()
        with self._lock:
            if self.state is not JobState.WAITING:
                return
            self.state = JobState.DONE
        self._finish(self._on_skip)

    def run(self) -> None:
        """Called by the lane thread."""
        if not self.start():
            return  # cancelled while it waited
        try:
            self._body(self)
        except BaseException as exc:
            self.fail(exc)
        finally:
            self.finish()

    # The steps of `run`, for a scheduler that runs many jobs' work in one loop.

    def start(self) -> bool:
        """WAITING -> RUNNING; False if the job was cancelled (its `on_skip` has run)."""
        with self._lock:
            if self.state is not JobState.WAITING:
                return False
            self.state = JobState.RUNNING
        self.started_ns = time.perf_counter_ns()
        self.queue_ns = self.started_ns - self.enqueued_ns
        return True

    def fail(self, exc: BaseException) -> None:
        """The work raised `exc`: frees the slot, then reports it."""
        self.release()
        self._safe(self._on_error, exc)

    def finish(self) -> None:
        with self._lock:
            self.state = JobState.DONE
        self.release()

    def release(self) -> None:
        """Runs `on_done` if it has not run yet."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._safe(self._on_done)

    def _finish(self, callback: Callable[[], None]) -> None:
        self.release()
        self._safe(callback)

    @staticmethod
    def _safe(callback: Callable[..., None], *args: object) -> None:
        # A failing callback must not take the lane thread down with it.
        try:
            callback(*args)
        except Exception:
            log.exception("lane job callback failed")


_STOP = object()


class Lane:
    """A FIFO of LaneJobs served by one dedicated thread."""

    def __init__(self, name: str = "millm-model-lane") -> None:
        # Unbounded here on purpose: admission (Engine) bounds how many jobs exist.
        self._queue: queue.SimpleQueue[LaneJob | object] = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def has_waiting(self) -> bool:
        """Whether jobs wait behind the running one."""
        return not self._queue.empty()

    def submit(self, job: LaneJob) -> None:
        if self._stopped.is_set():
            job.cancel()
            return
        self._queue.put(job)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stops taking work, skips what is waiting and waits for the running job."""
        self._stopped.set()
        self._queue.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            assert isinstance(item, LaneJob)
            if self._stopped.is_set():
                item.cancel()
                continue
            item.run()
        # Anything queued behind the stop marker is skipped, never run.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, LaneJob):
                item.cancel()


class PassBoundary:
    """Work that must run on the lane thread between two forward passes.

    Generations poll `run_pending()` before every forward pass, so a hook change
    waits for at most one decode step instead of for every queued request; an
    idle lane runs it through an ordinary job. Each posted function runs once.
    """

    def __init__(self) -> None:
        self._pending: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def post(self, fn: Callable[[], None]) -> None:
        self._pending.put(fn)

    def run_pending(self) -> None:
        while True:
            try:
                fn = self._pending.get_nowait()
            except queue.Empty:
                return
            fn()
