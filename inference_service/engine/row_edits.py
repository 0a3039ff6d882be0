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

The [rows, d] additions are built once per batch composition and kept on the hook
(`_AddsCache`): a decode step whose rows and steering vectors are the ones of the
step before reuses them, already in the hidden state's dtype, so a steady batch
allocates and copies nothing for steering (on a GPU: no per-row copies per step).
Rows joining or leaving, or a row's steering changing (a new compiled vector),
rebuild them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# [1, positions, d] -> [1, positions, d], for one row's slice.
RowTransform = Callable[[Tensor], Tensor]

# How many [rows, d] addition tensors were built since the process started (tests
# read it to see that a steady batch reuses them).
adds_built = 0


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
    adds: _AddsCache | None = None
    if adding:
        hook = rows[0][1].hook
        adds = getattr(hook, "_row_adds", None)
        if adds is None or not adds.matches(batch, adding):
            adds = _AddsCache(batch, adding)
            with contextlib.suppress(AttributeError):  # a hook without attributes: no reuse
                hook._row_adds = adds

    def edit(h: Tensor) -> Tensor | None:  # h [batch, positions, d]
        out = h
        if transforms:
            out = h.clone()
            for r, transform in transforms:
                out[r : r + 1] = transform(h[r : r + 1])
        if adds is not None:
            out = out + adds.as_dtype(h.dtype)
        for r, observe in observers:
            observe(h[r : r + 1], out[r : r + 1])
        return out if out is not h else None

    return edit


class _AddsCache:
    """One batch composition's additions: [batch, 1, d], per hidden-state dtype."""

    def __init__(self, batch: int, adding: list[tuple[int, Tensor]]) -> None:
        global adds_built
        first = adding[0][1]
        adds = torch.zeros(batch, first.shape[-1], dtype=torch.float32, device=first.device)
        for r, vector in adding:
            adds[r] = vector
        self.batch = batch
        # The vectors themselves are kept: identity, not id(), decides a match.
        self.rows = tuple(r for r, _ in adding)
        self.vectors = tuple(v for _, v in adding)
        self._by_dtype: dict[torch.dtype, Tensor] = {torch.float32: adds.unsqueeze(1)}
        adds_built += 1

    def matches(self, batch: int, adding: list[tuple[int, Tensor]]) -> bool:
        return (
            batch == self.batch
            and len(adding) == len(self.rows)
            and all(
                r == mine and v is vector
                for (r, v), mine, vector in zip(adding, self.rows, self.vectors, strict=True)
            )
        )

    def as_dtype(self, dtype: torch.dtype) -> Tensor:
        found = self._by_dtype.get(dtype)
        if found is None:
            found = self._by_dtype[dtype] = self._by_dtype[torch.float32].to(dtype)
        return found
