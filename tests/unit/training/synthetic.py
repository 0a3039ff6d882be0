"""Synthetic activations with known sparse structure, for fast trainer tests.

Each row is a sparse, non-negative mix of `n_directions` random unit directions
plus a little noise: exactly what an SAE should recover.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from inference_service.training.activations import BatchStream, Cursor
from inference_service.training.config import TrainingConfig
from inference_service.training.trainer import Trainer

D_IN = 32
WINDOW = 16


def sparse_mixture(
    rows: int, *, d_in: int = D_IN, n_directions: int = 96, active: int = 4, seed: int = 0
) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_directions, d_in, generator=generator)
    directions /= directions.norm(dim=1, keepdim=True)
    codes = torch.zeros(rows, n_directions)
    which = torch.rand(rows, n_directions, generator=generator).argsort(dim=1)[:, :active]
    codes.scatter_(1, which, torch.rand(rows, active, generator=generator) * 3 + 0.5)
    return codes @ directions + 0.01 * torch.randn(rows, d_in, generator=generator)


class MemorySource:
    """Training windows whose 'activations' are fixed rows: window i is rows
    i*WINDOW .. (i+1)*WINDOW; a transcoder's target is a fixed map of the input."""

    def __init__(self, x: Tensor, y: Tensor | None = None) -> None:
        self.x = x.view(-1, WINDOW, x.shape[1])
        self.y = None if y is None else y.view(-1, WINDOW, y.shape[1])
        self.calls = 0

    @property
    def windows(self) -> int:
        return self.x.shape[0]

    def rows(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        self.calls += 1
        x = self.x[windows].reshape(-1, self.x.shape[2])
        if self.y is None:
            return x, x
        return x, self.y[windows].reshape(-1, self.y.shape[2])


def make_trainer(
    config: TrainingConfig,
    source: MemorySource,
    eval_rows: tuple[Tensor, Tensor],
    steps: int,
    checkpoints: Path,
    *,
    device: torch.device | str = "cpu",
    store: torch.device | str | None = None,
) -> Trainer:
    stream = BatchStream(
        source,
        source.windows,
        batch_size=config.batch_size_tokens,
        chunk_windows=64,
        seed=config.seed,
        start=Cursor(),
        device=device,
        store=store,
    )
    d_out = eval_rows[1].shape[1]
    return Trainer(
        config,
        d_in=eval_rows[0].shape[1],
        d_out=d_out,
        stream=stream,
        eval_rows=eval_rows,
        steps=steps,
        checkpoint_dir=checkpoints,
        device=device,
    )
