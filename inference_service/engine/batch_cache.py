"""The KV cache of a decoding batch: one row per sequence, left-padded to a common length.

Each sequence is prefilled alone (its own `DynamicCache`, exactly as if it ran
alone), then its keys and values join the batch's cache as a new row. Rows have
different lengths, so each row's real entries sit at the right end and the
columns to their left are padding that the attention mask hides; positions are
passed per row, so rotary embeddings see each sequence's own positions. A row
that finishes is dropped, and padding columns that no row needs any more are cut
off the left, so the cache never holds more than the longest live row needs.

Only plain full-attention caches (`DynamicLayer` in every layer, as Llama, Qwen,
Mistral, GPT-2 and GPT-NeoX use) can be merged this way; `supports_batching`
says whether a model qualifies, and others decode one sequence at a time.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def supports_batching(cache: DynamicCache) -> bool:
    """Whether this (prefilled) cache's layers are plain full-attention layers."""
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _layers(cache: DynamicCache) -> list[Any]:
    """The per-layer key/value holders. transformers types them as a union that
    includes linear-attention layers, which a batched cache never holds."""
    return cache.layers


class BatchCache:
    """Rows of left-padded keys and values, with the mask and positions that go with them."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.lengths: list[int] = []  # real tokens of each row

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        """Columns of the cache (the longest row plus what padding is left)."""
        return 0 if self.cache is None else _layers(self.cache)[0].keys.shape[-2]

    def add(self, single: DynamicCache) -> None:
        """Appends a prefilled one-row cache as the last row."""
        length = _layers(single)[0].keys.shape[-2]
        if self.cache is None:
            self.cache, self.lengths = single, [length]
            return
        grow = max(0, length - self.width)
        pad_new = max(0, self.width - length)
        for mine, theirs in zip(_layers(self.cache), _layers(single), strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, grow), _pad_left(theirs.keys, pad_new)])
            mine.values = torch.cat(
                [_pad_left(mine.values, grow), _pad_left(theirs.values, pad_new)]
            )
        self.lengths.append(length)

    def keep(self, rows: list[int]) -> None:
        """Keeps only these rows, in this order, and drops padding nobody needs."""
        if not rows:
            self.cache, self.lengths = None, []
            return
        assert self.cache is not None
        self.lengths = [self.lengths[r] for r in rows]
        start = self.width - max(self.lengths)  # columns that are padding in every row
        index = torch.tensor(rows, device=_layers(self.cache)[0].keys.device)
        for layer in _layers(self.cache):
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]

    def step_inputs(self) -> dict[str, Tensor]:
        """The mask, positions and cache position for one decode step of every row."""
        assert self.cache is not None
        device = _layers(self.cache)[0].keys.device
        width = self.width
        positions = self.positions()
        columns = torch.arange(width + 1, device=device)
        # Row r's real tokens are its last lengths[r] columns, plus the new one.
        mask = (columns >= (width - positions)).long()  # [rows, width + 1]
        return {
            "attention_mask": mask,
            "position_ids": positions,
            "cache_position": torch.tensor([width], device=device),
        }

    def positions(self) -> Tensor:
        """[rows, 1]: each row's next position (its real tokens so far)."""
        assert self.cache is not None
        device = _layers(self.cache)[0].keys.device
        return torch.tensor(self.lengths, device=device).unsqueeze(1)

    @property
    def padded(self) -> bool:
        """Whether some row has padding columns (else a step's mask hides nothing)."""
        width = self.width
        return any(n != width for n in self.lengths)

    def advance(self) -> None:
        """Every row gained the token of the step just run."""
        self.lengths = [n + 1 for n in self.lengths]


def _pad_left(t: Tensor, columns: int) -> Tensor:
    return F.pad(t, (0, 0, columns, 0)) if columns else t  # [B, H, T, D], pad T on the left
