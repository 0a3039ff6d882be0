"""Per-row edits at hook sites for one batched forward pass.

Every sequence in a batch has its own steering and its own monitoring. Before a
pass, each row says what it does at a hook (`RowEdit`); `install` turns the rows
of one hook into a single edit over the whole [rows, positions, d] hidden state:
one [rows, d] tensor of additions (zeros for rows that add nothing) and, for the
rows whose edits read feature values (clamp, multiply), their own transform on
their own slice. A row's result is computed by the same operations whether it
runs alone or beside others, and a row without edits is left exactly as it was,
so nothing leaks between rows. A hook no row uses keeps no edit at all: the
model is then bit-identical to the model without hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# [1, positions, d] -> [1, positions, d], for one row's slice.
RowTransform = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class RowEdit:
    """What one sequence does at one hook site in the next forward pass."""

    hook: Any  # an object whose `edit` the forward hook reads (sae.attachments.SiteHook)
    add: Tensor | None = None  # [d], added at every position of the row (float32)
    transform: RowTransform | None = None  # edits that read feature values, run before `add`
    # Sees the row's state before and after the edits, [1, T, d] each.
    observe: Callable[[Tensor, Tensor], None] | None = None


def install(edits: Sequence[RowEdit | None]) -> Callable[[], None]:
    """Sets the hooks for a pass whose row r does `edits[r]`; returns the undo."""
    by_hook: dict[int, tuple[Any, list[tuple[int, RowEdit]]]] = {}
    for row, edit in enumerate(edits):
        if edit is not None:
            by_hook.setdefault(id(edit.hook), (edit.hook, []))[1].append((row, edit))
    hooks = []
    for hook, rows in by_hook.values():
        hook.edit = _batched_edit(len(edits), rows)
        hooks.append(hook)

    def undo() -> None:
        for hook in hooks:
            hook.edit = None

    return undo


def _batched_edit(batch: int, rows: list[tuple[int, RowEdit]]) -> Callable[[Tensor], Tensor | None]:
    transforms = [(r, e.transform) for r, e in rows if e.transform is not None]
    observers = [(r, e.observe) for r, e in rows if e.observe is not None]
    adding = [(r, e.add) for r, e in rows if e.add is not None]
    adds: Tensor | None = None
    if adding:
        first = adding[0][1]
        adds = torch.zeros(batch, first.shape[-1], dtype=torch.float32, device=first.device)
        for r, vector in adding:
            adds[r] = vector

    def edit(h: Tensor) -> Tensor | None:  # h [batch, positions, d]
        out = h
        if transforms:
            out = h.clone()
            for r, transform in transforms:
                out[r : r + 1] = transform(h[r : r + 1])
        if adds is not None:
            out = out + adds.to(h.dtype).unsqueeze(1)
        for r, observe in observers:
            observe(h[r : r + 1], out[r : r + 1])
        return out if out is not h else None

    return edit
