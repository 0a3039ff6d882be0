"""Runs long operations on worker threads and publishes full snapshots to watchers.

Work functions run off the event loop (a download is I/O, not model work, so it
does not take the model lane). Every progress report replaces the snapshot and
wakes watchers; the store is written on state or stage changes and at most once
a second otherwise, so a busy transfer does not hammer the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from inference_service.errors import MillmError, NotFoundError
from inference_service.hub.fetch import TransferCancelled
from inference_service.operations.progress import RateMeter, eta_seconds
from inference_service.operations.types import OperationSnapshot, OperationState

log = logging.getLogger(__name__)

_PERSIST_INTERVAL_S = 1.0


class OperationStore(Protocol):
    def save(self, snapshot: OperationSnapshot) -> None: ...
    def get(self, operation_id: str) -> OperationSnapshot | None: ...
    def list(
        self, *, limit: int, offset: int, unfinished_only: bool
    ) -> list[OperationSnapshot]: ...


class MemoryOperationStore:
    """A store that forgets on restart; for tests and database-less use."""

    def __init__(self) -> None:
        self._items: dict[str, OperationSnapshot] = {}
        self._lock = threading.Lock()

    def save(self, snapshot: OperationSnapshot) -> None:
        with self._lock:
            self._items[snapshot.id] = snapshot

    def get(self, operation_id: str) -> OperationSnapshot | None:
        with self._lock:
            return self._items.get(operation_id)

    def list(self, *, limit: int, offset: int, unfinished_only: bool) -> list[OperationSnapshot]:
        with self._lock:
            items = sorted(self._items.values(), key=lambda s: s.created_at_unix_ms, reverse=True)
        if unfinished_only:
            items = [s for s in items if not s.done]
        return items[offset : offset + limit]


def _now_ms() -> int:
    return int(time.time() * 1000)


class OperationContext:
    """What a work function sees: report progress, ask whether to stop."""

    def __init__(self, manager: OperationsManager, operation_id: str) -> None:
        self._manager = manager
        self.id = operation_id
        self._cancel = threading.Event()
        self._rate = RateMeter()

    def is_cancelled(self) -> bool:
        return self._cancel.is_set()

    def progress(self, stage: str, bytes_done: int, bytes_total: int) -> None:
        rate = self._rate.add(bytes_done)
        self._manager._update(
            self.id,
            stage=stage,
            bytes_done=bytes_done,
            bytes_total=bytes_total,
            bytes_per_s=rate,
            eta_s=eta_seconds(bytes_done, bytes_total, rate),
        )


@dataclass(frozen=True)
class OperationFinished:
    """An operation reached a final state (an event)."""

    operation: OperationSnapshot


class OperationsManager:
    def __init__(
        self,
        store: OperationStore,
        loop: asyncio.AbstractEventLoop,
        publish: Callable[[OperationFinished], None] = lambda event: None,
    ) -> None:
        """`publish` is told when an operation finishes (from its worker thread)."""
        self._store = store
        self._publish = publish
        self._loop = loop
        self._lock = threading.Lock()
        self._live: dict[str, OperationSnapshot] = {}
        self._contexts: dict[str, OperationContext] = {}
        # One event per watcher, so a watcher never clears another's wake-up.
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._persisted_at: dict[str, float] = {}

    # ---- starting and running --------------------------------------------------

    def start(
        self,
        kind: str,
        target: str,
        work: Callable[[OperationContext], None],
        on_finished: Callable[[OperationSnapshot], None] = lambda snapshot: None,
    ) -> OperationSnapshot:
        now = _now_ms()
        snapshot = OperationSnapshot(
            id=uuid.uuid4().hex[:16],
            kind=kind,
            state=OperationState.RUNNING,
            stage="starting",
            target=target,
            created_at_unix_ms=now,
            updated_at_unix_ms=now,
        )
        context = OperationContext(self, snapshot.id)
        with self._lock:
            self._live[snapshot.id] = snapshot
            self._contexts[snapshot.id] = context
        self._store.save(snapshot)
        thread = threading.Thread(
            target=self._run,
            args=(context, work, on_finished),
            name=f"op-{snapshot.id}",
            daemon=True,
        )
        thread.start()
        return snapshot

    def _run(
        self,
        context: OperationContext,
        work: Callable[[OperationContext], None],
        on_finished: Callable[[OperationSnapshot], None],
    ) -> None:
        changes: dict[str, object]
        try:
            work(context)
            changes = {"state": OperationState.SUCCEEDED, "eta_s": None}
        except TransferCancelled:
            changes = {"state": OperationState.CANCELLED, "stage": "cancelled", "eta_s": None}
        except MillmError as exc:
            changes = {
                "state": OperationState.FAILED,
                "error_message": exc.message,
                "error_reason": exc.reason,
                "eta_s": None,
            }
        except Exception as exc:
            log.exception("operation %s failed", context.id)
            changes = {
                "state": OperationState.FAILED,
                "error_message": str(exc) or type(exc).__name__,
                "error_reason": "INTERNAL",
                "eta_s": None,
            }
        # Consequences first (a record marked corrupted, say), then the final state:
        # whoever sees the operation end also sees what it changed.
        try:
            on_finished(dataclasses.replace(self.get(context.id), **changes))  # type: ignore[arg-type]
        except Exception:
            log.exception("after operation %s", context.id)
        self._update(context.id, **changes)
        with self._lock:
            self._contexts.pop(context.id, None)

    def _update(self, operation_id: str, **changes: object) -> OperationSnapshot:
        now_ms = _now_ms()
        with self._lock:
            old = self._live[operation_id]
            new = dataclasses.replace(old, updated_at_unix_ms=now_ms, **changes)  # type: ignore[arg-type]
            if new.done and not old.done:
                new = dataclasses.replace(new, finished_at_unix_ms=now_ms)
            self._live[operation_id] = new
            due = (
                time.monotonic() - self._persisted_at.get(operation_id, 0.0) >= _PERSIST_INTERVAL_S
            )
            persist = due or new.state != old.state or new.stage != old.stage
            if persist:
                self._persisted_at[operation_id] = time.monotonic()
        if persist:
            self._store.save(new)
        if new.done and not old.done:
            self._publish(OperationFinished(new))
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody watches
            self._loop.call_soon_threadsafe(self._wake_watchers, operation_id)
        return new

    def _wake_watchers(self, operation_id: str) -> None:
        for event in self._watchers.get(operation_id, ()):
            event.set()

    # ---- reading ---------------------------------------------------------------

    def get(self, operation_id: str) -> OperationSnapshot:
        with self._lock:
            live = self._live.get(operation_id)
        snapshot = live or self._store.get(operation_id)
        if snapshot is None:
            raise NotFoundError(f"No operation has the id '{operation_id}'.", param="id")
        return snapshot

    def list(self, *, limit: int, offset: int, unfinished_only: bool) -> list[OperationSnapshot]:
        stored = self._store.list(limit=limit, offset=offset, unfinished_only=unfinished_only)
        with self._lock:
            return [self._live.get(s.id, s) for s in stored]

    async def watch(self, operation_id: str) -> AsyncIterator[OperationSnapshot]:
        """The current snapshot, then one per change, ending with a final state."""
        event = asyncio.Event()
        self._watchers.setdefault(operation_id, set()).add(event)
        try:
            snapshot = self.get(operation_id)
            yield snapshot
            while not snapshot.done:
                await event.wait()
                event.clear()
                latest = self.get(operation_id)
                if latest != snapshot:
                    snapshot = latest
                    yield snapshot
        finally:
            self._watchers[operation_id].discard(event)

    def live_snapshots(self) -> tuple[OperationSnapshot, ...]:
        """Every operation this process started, finished or not (for metrics)."""
        with self._lock:
            return tuple(self._live.values())

    def cancel(self, operation_id: str) -> OperationSnapshot:
        with self._lock:
            context = self._contexts.get(operation_id)
        if context is not None:
            context._cancel.set()
        return self.get(operation_id)

    def find_running(self, kind: str, target: str) -> OperationSnapshot | None:
        with self._lock:
            for snapshot in self._live.values():
                if snapshot.kind == kind and snapshot.target == target and not snapshot.done:
                    return snapshot
        return None
