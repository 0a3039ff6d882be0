"""What the engine reports as it works, for metrics: admissions, token timings, decode steps.

The engine calls these from the event loop (admission) and from the worker lane
(every token, every decode step), so an implementation must be cheap and
thread-safe. `NO_METER` does nothing; `inference_service.metrics` implements
them with Prometheus metrics. Kept free of any metrics library, so the engine
does not depend on one.
"""

from __future__ import annotations

from typing import Protocol

from inference_service.engine.types import GenerationEvent

# Admission outcomes other than "admitted".
REFUSED_QUEUE_FULL = "queue_full"
REFUSED_UNLOADING = "unloading"
REFUSED_KV_BUDGET = "kv_budget"


class GenerationTrack(Protocol):
    """One admitted generation: each event it emits, or the error that ended it."""

    def event(self, event: GenerationEvent) -> None: ...

    def failed(self) -> None: ...


class EngineMeter(Protocol):
    def admitted(self, kind: str) -> None:
        """A request of `kind` ("generation", "embedding") was admitted."""

    def refused(self, kind: str, reason: str) -> None:
        """A request of `kind` was refused at admission (one of the REFUSED_* reasons)."""

    def generation(self, prompt_tokens: int) -> GenerationTrack:
        """A generation of `prompt_tokens` is being admitted; its track times it from here."""
        ...

    def decode_step(self, rows: int) -> None:
        """One batched decode step ran with `rows` sequences."""


class _NoTrack:
    def event(self, event: GenerationEvent) -> None:
        pass

    def failed(self) -> None:
        pass


class _NoMeter:
    def admitted(self, kind: str) -> None:
        pass

    def refused(self, kind: str, reason: str) -> None:
        pass

    def generation(self, prompt_tokens: int) -> GenerationTrack:
        return _NO_TRACK

    def decode_step(self, rows: int) -> None:
        pass


_NO_TRACK = _NoTrack()
NO_METER: EngineMeter = _NoMeter()
