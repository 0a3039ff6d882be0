"""Activations for training: harvested from the model on the fly, or from a disk cache,
served in shuffled batches from a position that a checkpoint can record.

Order is a pure function of the seed: each epoch is a seeded permutation of the
training windows, cut into chunks; each chunk's rows are shuffled by a generator
seeded from (seed, epoch, chunk). A `Cursor` (epoch, chunk, row offset) is
therefore enough to resume exactly where a run stopped, which is what makes a
stopped-and-resumed run end with the same weights as an uninterrupted one.

Where the rows live when the model is on a GPU (`store_device`): the current chunk
stays on the device when it fits `device_budget_bytes` (a quarter of the device's
free memory), and batches are cut from it with no copy at all; otherwise it is kept
in pinned host memory and each batch goes over with one asynchronous copy. On the
CPU both are the CPU and nothing moves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

# windows [B, T] -> one [B, T, d] float32 tensor per capture site (input, then target).
Harvest = Callable[[Tensor], list[Tensor]]


class ActivationSource(Protocol):
    def rows(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        """Input and target rows [n, d] for window indices into the training windows."""
        ...


def _flatten(tensors: list[Tensor], keep_first: bool) -> tuple[Tensor, Tensor]:
    parts = [t if keep_first else t[:, 1:] for t in tensors]
    flat = [p.reshape(-1, p.shape[-1]) for p in parts]
    return flat[0], flat[-1]


class LiveActivations:
    """Runs the model for every request, `slice_windows` windows per forward pass."""

    def __init__(
        self, harvest: Harvest, windows: Tensor, slice_windows: int, keep_first: bool
    ) -> None:
        self._harvest = harvest
        self._windows = windows
        self._slice = slice_windows
        self._keep_first = keep_first
        self.windows_run = 0  # for tests and the progress stage

    def rows(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        inputs: list[Tensor] = []
        targets: list[Tensor] = []
        for start in range(0, len(windows), self._slice):
            batch = self._windows[windows[start : start + self._slice]]
            x, y = _flatten(self._harvest(batch), self._keep_first)
            inputs.append(x)
            targets.append(y)
            self.windows_run += len(batch)
        x = torch.cat(inputs)
        return x, (x if targets[0] is inputs[0] else torch.cat(targets))


class CachedActivations:
    """Every training window's activations in float32 files under `folder`, written
    once (in window order) and marked complete only when whole."""

    def __init__(self, folder: Path, rows_per_window: int) -> None:
        meta = json.loads((folder / "complete.json").read_text())
        self._per_window = rows_per_window
        shape = (meta["windows"], rows_per_window, meta["d_in"])
        self._x = np.memmap(folder / "input.f32", np.float32, "r", shape=shape)
        self._y = self._x
        if meta.get("d_out"):
            out_shape = (meta["windows"], rows_per_window, meta["d_out"])
            self._y = np.memmap(folder / "target.f32", np.float32, "r", shape=out_shape)

    @staticmethod
    def is_complete(folder: Path) -> bool:
        return (folder / "complete.json").is_file()

    @staticmethod
    def build(
        folder: Path,
        live: LiveActivations,
        n_windows: int,
        progress: Callable[[int, int], None],
        should_stop: Callable[[], bool],
    ) -> bool:
        """Harvests every window into `folder`; False if stopped first (nothing kept)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "complete.json").unlink(missing_ok=True)
        x_file = y_file = None
        step = 64
        for start in range(0, n_windows, step):
            if should_stop():
                return False
            indices = torch.arange(start, min(start + step, n_windows))
            x, y = live.rows(indices)
            per_window = x.shape[0] // len(indices)
            if x_file is None:
                x_file = np.memmap(
                    folder / "input.f32",
                    np.float32,
                    "w+",
                    shape=(n_windows, per_window, x.shape[1]),
                )
                if y is not x:
                    y_file = np.memmap(
                        folder / "target.f32",
                        np.float32,
                        "w+",
                        shape=(n_windows, per_window, y.shape[1]),
                    )
            x_host = x.cpu().view(len(indices), per_window, -1).numpy()
            x_file[start : start + len(indices)] = x_host
            if y_file is not None:
                y_host = y.cpu().view(len(indices), per_window, -1).numpy()
                y_file[start : start + len(indices)] = y_host
            progress(start + len(indices), n_windows)
        assert x_file is not None
        x_file.flush()
        meta = {"windows": n_windows, "d_in": x_file.shape[2]}
        if y_file is not None:
            y_file.flush()
            meta["d_out"] = y_file.shape[2]
        (folder / "complete.json").write_text(json.dumps(meta))
        return True

    def rows(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        index = windows.numpy()
        x = torch.from_numpy(np.ascontiguousarray(self._x[index])).reshape(-1, self._x.shape[2])
        if self._y is self._x:
            return x, x
        y = torch.from_numpy(np.ascontiguousarray(self._y[index])).reshape(-1, self._y.shape[2])
        return x, y


# Share of a GPU's free memory the current chunk of activations may keep there.
_DEVICE_BUDGET_FRACTION = 0.25


def device_budget_bytes(device: torch.device | str) -> int:
    """Bytes of activations a chunk may keep on `device`; 0 on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    free, _total = torch.cuda.mem_get_info(device)
    return int(free * _DEVICE_BUDGET_FRACTION)


def store_device(
    device: torch.device | str, chunk_bytes: int, budget: int | None = None
) -> torch.device:
    """Where a chunk of `chunk_bytes` bytes is kept for training on `device`: the
    device itself when it fits its budget, else the host (pinned by BatchStream)."""
    device = torch.device(device)
    if device.type == "cpu":
        return device
    limit = device_budget_bytes(device) if budget is None else budget
    return device if chunk_bytes <= limit else torch.device("cpu")


@dataclass(frozen=True)
class Cursor:
    """The next unread row: in `chunk` of `epoch`, after `offset` rows."""

    epoch: int = 0
    chunk: int = 0
    offset: int = 0


def _generator(seed: int, *parts: int) -> torch.Generator:
    value = seed
    for part in parts:  # a fixed mix, never Python's hash(), so runs agree
        value = (value * 1_000_003 + part + 1) % (1 << 62)
    return torch.Generator().manual_seed(value)


class BatchStream:
    """Shuffled batches of `batch_size` rows over the training windows, endlessly."""

    def __init__(
        self,
        source: ActivationSource,
        n_windows: int,
        *,
        batch_size: int,
        chunk_windows: int,
        seed: int,
        start: Cursor,
        scale_in: float = 1.0,
        scale_out: float = 1.0,
        device: torch.device | str = "cpu",
        store: torch.device | str | None = None,
    ) -> None:
        """Batches come out on `device`; chunks are kept on `store` (default: `device`)."""
        self.device = torch.device(device)
        self.store = self.device if store is None else torch.device(store)
        self._source = source
        self._n = n_windows
        self._batch = batch_size
        self._chunk_windows = max(1, min(chunk_windows, n_windows))
        self._chunks_per_epoch = math.ceil(n_windows / self._chunk_windows)
        self._seed = seed
        self._scale_in, self._scale_out = scale_in, scale_out
        self._epoch, self._chunk = start.epoch, start.chunk
        self._offset = start.offset
        self._rows: tuple[Tensor, Tensor | None] | None = None

    @property
    def cursor(self) -> Cursor:
        return Cursor(self._epoch, self._chunk, self._offset)

    def seek(self, cursor: Cursor) -> None:
        self._epoch, self._chunk, self._offset = cursor.epoch, cursor.chunk, cursor.offset
        self._rows = None

    def set_scales(self, scale_in: float, scale_out: float) -> None:
        self._scale_in, self._scale_out = scale_in, scale_out

    def _load(self) -> tuple[Tensor, Tensor | None]:
        """The current chunk's rows, shuffled; None for the target when it is the input."""
        order = torch.randperm(self._n, generator=_generator(self._seed, self._epoch))
        start = self._chunk * self._chunk_windows
        x, y = self._source.rows(order[start : start + self._chunk_windows])
        generator = _generator(self._seed, self._epoch, self._chunk)
        shuffle = torch.randperm(x.shape[0], generator=generator)
        return self._keep(x[shuffle]), (None if y is x else self._keep(y[shuffle]))

    def _keep(self, rows: Tensor) -> Tensor:
        """`rows` where chunks are kept: on the device (one copy, from pinned memory
        when it comes from the host), or in pinned host memory for a GPU run."""
        if self.store == self.device:
            if rows.device != self.device and self.device.type == "cuda":
                return rows.pin_memory().to(self.device, non_blocking=True)
            return rows.to(self.device)
        rows = rows.to(self.store)
        if self.device.type == "cuda" and not rows.is_pinned():
            rows = rows.pin_memory()
        return rows

    def _to_device(self, part: Tensor) -> Tensor:
        return part.to(self.device, non_blocking=True)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """The next `batch_size` (input, target) rows, scaled; crosses chunks and epochs."""
        xs: list[Tensor] = []
        ys: list[Tensor] = []
        need = self._batch
        while need:
            if self._rows is None:
                self._rows = self._load()
            x, y = self._rows
            if self._offset >= x.shape[0]:
                self._advance()
                continue
            take = min(need, x.shape[0] - self._offset)
            xs.append(self._to_device(x[self._offset : self._offset + take]))
            if y is not None:
                ys.append(self._to_device(y[self._offset : self._offset + take]))
            self._offset += take
            need -= take
        x = torch.cat(xs) * self._scale_in
        if not ys:  # an SAE: the target is the input itself
            return (
                x,
                x if self._scale_in == self._scale_out else x / self._scale_in * self._scale_out,
            )
        return x, torch.cat(ys) * self._scale_out

    def _advance(self) -> None:
        self._rows = None
        self._offset = 0
        self._chunk += 1
        if self._chunk >= self._chunks_per_epoch:
            self._chunk = 0
            self._epoch += 1
