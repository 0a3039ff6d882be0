"""The demo's self-written corpus: built once in parts, cached, resumed if interrupted.

On two idle CPU cores the 135M model writes about 70 new tokens per second (12 when
the cores are shared with other work: 846 s for one part), so a corpus
large enough for a clean SAE takes a while. It is written in parts of `PART_PROMPTS`
prompts (each part its own seed, its own JSONL file, renamed into place only when
complete): a later run, or one after Ctrl-C, generates only the missing parts, and
training reads the folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inference_service.training.self_corpus import (
    DEFAULT_BATCH_SIZE,
    generate_corpus,
    write_jsonl,
)

PART_PROMPTS = DEFAULT_BATCH_SIZE
MAX_NEW_TOKENS = 160
# Share of replies also written upper-cased, right after the original.
UPPER_FRACTION = 0.3


def missing_parts(folder: Path, parts: int) -> list[int]:
    return [i for i in range(parts) if not part_path(folder, i).exists()]


def part_path(folder: Path, index: int) -> Path:
    return folder / f"part-{index:03d}.jsonl"


def build_corpus(
    model: Any,
    tokenizer: Any,
    folder: Path,
    parts: int,
    progress: Callable[[str], None],
) -> None:
    """Writes every missing part of `folder` (blocking: run it on the model's worker)."""
    todo = missing_parts(folder, parts)
    began = time.monotonic()
    for done, index in enumerate(todo, start=1):
        docs = generate_corpus(
            model,
            tokenizer,
            n_prompts=PART_PROMPTS,
            max_new_tokens=MAX_NEW_TOKENS,
            batch_size=DEFAULT_BATCH_SIZE,
            seed=index,
            upper_fraction=UPPER_FRACTION,
        )
        partial = part_path(folder, index).with_suffix(".partial")
        write_jsonl(docs, partial)
        partial.rename(part_path(folder, index))
        progress(f"part {done}/{len(todo)} written ({time.monotonic() - began:.0f} s)")
