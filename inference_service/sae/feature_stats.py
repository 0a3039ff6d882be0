"""Per-feature statistics a trained SAE's folder carries (training writes them)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor

# Frequency, maximum and mean-when-active per feature (training/output.py writes it).
FEATURE_STATS_FILE = "feature_stats.safetensors"


def read_feature_max(folder: Path) -> Tensor | None:
    """Each feature's maximum activation over the training data, [d_sae]; None when
    the folder has no statistics (SAEs from elsewhere)."""
    path = folder / FEATURE_STATS_FILE
    return load_file(str(path))["max_activation"] if path.is_file() else None


# Corpus statistics (features/statistics.py) live outside the SAE's folder, keyed by
# the sha256 of its weights, so a re-imported copy of the same SAE finds them.
CORPUS_STATISTICS_FILE = "corpus_statistics.safetensors"


def corpus_statistics_path(data_dir: Path, weights_sha256: str) -> Path:
    return data_dir / "features" / weights_sha256 / CORPUS_STATISTICS_FILE
