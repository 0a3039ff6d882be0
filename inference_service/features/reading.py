"""Text through the model up to the SAE's site, then through the SAE.

Forward passes run on the engine's worker lane as background work, the way
training harvests activations (training/sites.py `capture`): the pass stops at
the site, and requests admitted meanwhile go first (`wait_for_requests`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from inference_service.engine.engine import Engine
from inference_service.sae.architectures import Sae
from inference_service.training.sites import CaptureSite, capture

# Tokens per window of corpus text, as training's default context size.
CONTEXT_TOKENS = 128
# Windows per forward pass: about 1,000 tokens, one short lane job at a time.
WINDOWS_PER_PASS = 8
_IDLE_POLL_S = 0.05


@dataclass(frozen=True)
class SaeReader:
    """Reads activations of `sae` at `site` from the served model."""

    engine: Engine
    site: CaptureSite
    sae: Sae

    def activations(self, token_ids: Tensor) -> Tensor:
        """[B, T] token ids -> [B, T, d_sae] feature activations; position 0 is zero
        (it is the attention sink, left out everywhere, as training does)."""
        wait_for_requests(self.engine)
        hidden = self.engine.run_background(lambda model: capture(model, [self.site], token_ids))[0]
        with torch.inference_mode():
            acts = self.sae.encode(hidden.to(self.sae.weights.W_enc.device)).float().cpu()
            acts[:, 0] = 0
        return acts


def wait_for_requests(engine: Engine, should_stop: Callable[[], bool] = lambda: False) -> None:
    """Blocks while inference requests are admitted: they always go first."""
    while engine.queue_depth > 0 and not should_stop():
        time.sleep(_IDLE_POLL_S)


def corpus_windows(documents: Iterator[str], tokenizer: Any, max_tokens: int) -> Iterator[Tensor]:
    """Batches [b, T <= CONTEXT_TOKENS] of the documents' tokens (EOS between documents)
    until `max_tokens` counted tokens; each window's first position is not counted."""
    batch: list[list[int]] = []
    counted = 0
    for window in _windows(documents, tokenizer):
        window = window[: max_tokens - counted + 1]
        counted += len(window) - 1
        if batch and len(window) != len(batch[0]):  # only the last window is shorter
            yield torch.tensor(batch)
            batch = []
        batch.append(window)
        if len(batch) == WINDOWS_PER_PASS:
            yield torch.tensor(batch)
            batch = []
        if counted >= max_tokens:
            break
    if batch:
        yield torch.tensor(batch)


def _windows(documents: Iterator[str], tokenizer: Any) -> Iterator[list[int]]:
    stream: list[int] = []
    for document in documents:
        stream.extend(tokenizer(document, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            stream.append(tokenizer.eos_token_id)
        while len(stream) >= CONTEXT_TOKENS:
            yield stream[:CONTEXT_TOKENS]
            del stream[:CONTEXT_TOKENS]
    if len(stream) > 1:
        yield stream
