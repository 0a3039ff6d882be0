"""Domain snapshot of an operation; servicers translate it to `millm.v1.Operation`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OperationState = Literal["pending", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class OperationSnapshot:
    id: str
    kind: str
    state: OperationState
    stage: str
    target: str
    bytes_done: int = 0
    bytes_total: int = 0
    bytes_per_s: float = 0.0
    eta_s: float | None = None
    error_message: str = ""
    error_reason: str = ""
    created_at_unix_ms: int = 0
    updated_at_unix_ms: int = 0
    finished_at_unix_ms: int = 0

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES
