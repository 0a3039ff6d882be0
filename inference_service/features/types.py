"""The feature domain's values: labels, and what a feature's dashboard holds."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from inference_service.features.search import ContrastHit, TextHit


class LabelSource(StrEnum):
    USER = "user"
    NEURONPEDIA = "neuronpedia"
    MILLM_IMPORT = "millm-import"


@dataclass(frozen=True)
class FeatureLabel:
    index: int
    label: str
    notes: str
    source: str  # a LabelSource value


@dataclass(frozen=True)
class FeatureStatistics:
    """One feature's numbers over the last corpus read (see features/statistics.py)."""

    tokens: int
    firing_rate: float
    max_activation: float
    mean_activation: float
    quantiles: list[float]  # 0.5, 0.9, 0.99 of the non-zero activations
    bin_edges: list[float]
    counts: list[int]


@dataclass(frozen=True)
class FeatureContext:
    tokens: list[str]
    activations: list[float]
    peak: int  # index in `tokens`
    max_activation: float


@dataclass(frozen=True)
class LensToken:
    token: str
    token_id: int
    logit: float


@dataclass(frozen=True)
class Feature:
    index: int
    statistics: FeatureStatistics | None
    top_contexts: list[FeatureContext]
    promoted: list[LensToken]
    suppressed: list[LensToken]
    label: FeatureLabel | None
    suggested_strength: float


@dataclass(frozen=True)
class TextSearch:
    tokens: list[str]
    hits: list[tuple[TextHit, FeatureLabel | None]]


@dataclass(frozen=True)
class ContrastResult:
    hits: list[tuple[ContrastHit, FeatureLabel | None]]


@dataclass(frozen=True)
class ImportCount:
    imported: int
    skipped: int
