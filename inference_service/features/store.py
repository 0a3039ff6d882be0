"""Corpus statistics on disk: one safetensors file per SAE, keyed by its weights' sha256.

Written to a temporary file and renamed, so a reader sees the old file or the
new one, never half of one. What the statistics were computed from (corpus,
tokens, model, hook site) rides along as the file's string metadata.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from inference_service.features.statistics import CorpusStatistics
from inference_service.sae.feature_stats import corpus_statistics_path

_TENSORS = tuple(f.name for f in fields(CorpusStatistics) if f.name != "tokens")


@dataclass(frozen=True)
class StatisticsSource:
    """What a statistics file was computed from."""

    corpus: str  # a corpus id, or "self-written" for the built-in sample
    model: str
    hook_name: str


class StatisticsStore:
    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir

    def path(self, weights_sha256: str) -> Path:
        return corpus_statistics_path(self._data_dir, weights_sha256)

    def save(
        self, weights_sha256: str, statistics: CorpusStatistics, source: StatisticsSource
    ) -> Path:
        path = self.path(weights_sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(statistics, name).contiguous() for name in _TENSORS}
        metadata = {
            "tokens": str(statistics.tokens),
            "corpus": source.corpus,
            "model": source.model,
            "hook_name": source.hook_name,
        }
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".statistics-", suffix=".part")
        os.close(fd)
        try:
            save_file(tensors, temporary, metadata=metadata)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    def load(self, weights_sha256: str) -> CorpusStatistics | None:
        """The statistics kept for the SAE; None when none have been computed."""
        path = self.path(weights_sha256)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as reader:
            tokens = int((reader.metadata() or {}).get("tokens", "0"))
            tensors = {name: reader.get_tensor(name) for name in _TENSORS}
        return CorpusStatistics(tokens=tokens, **tensors)

    def load_feature(self, weights_sha256: str, index: int) -> CorpusStatistics | None:
        """One feature's statistics (a `CorpusStatistics` of width 1), read without the rest."""
        path = self.path(weights_sha256)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as reader:
            tokens = int((reader.metadata() or {}).get("tokens", "0"))
            tensors = {name: reader.get_slice(name)[index : index + 1] for name in _TENSORS}
        return CorpusStatistics(tokens=tokens, **tensors)
