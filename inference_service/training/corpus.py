"""Training text: reading a corpus and cutting it into fixed-length token windows.

A corpus is a .txt file (documents separated by blank lines), a .jsonl file (one
JSON object per line, the text under `text_field`), or a folder of them read in
sorted order. Documents are tokenised without special tokens, joined with the
EOS token between them, and cut into windows of `context_size` tokens (each
starting with BOS when asked); the incomplete tail is dropped. A seeded
permutation holds some windows out for evaluation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from inference_service.errors import InvalidArgumentError, NotFoundError

CORPUS_SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class Windows:
    """The corpus as token windows, split for training and evaluation."""

    train: Tensor  # [N_train, context_size] token ids
    eval: Tensor  # [N_eval, context_size]
    fingerprint: str  # sha256 of every window, in order: the activation-cache key

    @property
    def context_size(self) -> int:
        return int(self.train.shape[1])


def resolve_path(data_root: Path | None, relative: str) -> Path:
    """A corpus path the user named, kept inside the allowed data root."""
    if data_root is None:
        raise InvalidArgumentError(
            "Training from server paths is off; set MILLM_TRAINING_DATA_ROOT, or upload "
            "the corpus with TrainingService.UploadCorpus.",
            param="corpus.path",
        )
    root = data_root.resolve()
    candidate = (root / relative).resolve()
    if Path(relative).is_absolute() or not candidate.is_relative_to(root):
        raise InvalidArgumentError(
            "corpus.path must be a relative path inside the training data root.",
            param="corpus.path",
        )
    if not candidate.exists():
        raise NotFoundError(
            f"There is no file or folder '{relative}' under the training data root.",
            param="corpus.path",
        )
    return candidate


def corpus_files(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    files = [f for f in files if f.suffix in CORPUS_SUFFIXES]
    if not files:
        raise InvalidArgumentError(
            f"No corpus files found (want {' or '.join(CORPUS_SUFFIXES)}).", param="corpus"
        )
    return files


def read_documents(files: list[Path], text_field: str) -> Iterator[str]:
    for file in files:
        if file.suffix == ".jsonl":
            yield from _jsonl_documents(file, text_field)
        else:
            text = file.read_text(encoding="utf-8", errors="replace")
            yield from (part.strip() for part in text.split("\n\n") if part.strip())


def _jsonl_documents(file: Path, text_field: str) -> Iterator[str]:
    with file.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record: Any = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgumentError(
                    f"{file.name} line {number} is not JSON ({exc.msg}).", param="corpus"
                ) from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise InvalidArgumentError(
                    f"{file.name} line {number} has no string field '{text_field}' "
                    "(set text_field to the field that holds the text).",
                    param="text_field",
                )
            if text.strip():
                yield text


def count_documents(path: Path, text_field: str = "text") -> int:
    return sum(1 for _ in read_documents(corpus_files(path), text_field))


def tokenize_windows(
    documents: Iterator[str],
    tokenizer: Any,
    *,
    context_size: int,
    prepend_bos: bool,
    eval_fraction: float,
    seed: int,
) -> Windows:
    bos = tokenizer.bos_token_id if prepend_bos else None
    body = context_size - (1 if bos is not None else 0)
    separator = tokenizer.eos_token_id
    stream: list[int] = []
    for document in documents:
        ids = tokenizer(document, add_special_tokens=False)["input_ids"]
        stream.extend(ids)
        if separator is not None:
            stream.append(separator)
    count = len(stream) // body
    if count < 2:
        raise InvalidArgumentError(
            f"The corpus has {len(stream)} tokens: too few for two windows of {context_size}; "
            "add text or lower context_size.",
            param="corpus",
        )
    windows = torch.tensor(stream[: count * body], dtype=torch.long).view(count, body)
    if bos is not None:
        windows = torch.cat([torch.full((count, 1), bos, dtype=torch.long), windows], dim=1)
    fingerprint = hashlib.sha256(windows.numpy().tobytes()).hexdigest()
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    n_eval = max(1, round(count * eval_fraction))
    return Windows(windows[order[n_eval:]], windows[order[:n_eval]], fingerprint)
