"""Pure translation between the feature domain and `millm.v1` feature messages."""

from __future__ import annotations

from inference_service.features.label_files import LabelFormat
from inference_service.features.search import ContrastHit, ContrastMeasure, TextHit
from inference_service.features.types import (
    ContrastResult,
    Feature,
    FeatureContext,
    FeatureLabel,
    FeatureStatistics,
    LensToken,
    TextSearch,
)
from millm.v1 import feature_service_pb2 as pb

_MEASURES = {
    pb.CONTRAST_MEASURE_UNSPECIFIED: ContrastMeasure.AUROC,
    pb.CONTRAST_MEASURE_AUROC: ContrastMeasure.AUROC,
    pb.CONTRAST_MEASURE_FIRING_RATE_GAP: ContrastMeasure.FIRING_RATE_GAP,
}
_MEASURE_MESSAGES = {
    ContrastMeasure.AUROC: pb.CONTRAST_MEASURE_AUROC,
    ContrastMeasure.FIRING_RATE_GAP: pb.CONTRAST_MEASURE_FIRING_RATE_GAP,
}
_LABEL_FORMATS = {
    pb.LABEL_FORMAT_UNSPECIFIED: LabelFormat.MILLM,
    pb.LABEL_FORMAT_MILLM: LabelFormat.MILLM,
    pb.LABEL_FORMAT_NEURONPEDIA: LabelFormat.NEURONPEDIA,
}


def measure(value: int) -> ContrastMeasure:
    return _MEASURES.get(value, ContrastMeasure.AUROC)


def label_format(value: int) -> LabelFormat:
    return _LABEL_FORMATS.get(value, LabelFormat.MILLM)


def label(value: FeatureLabel) -> pb.FeatureLabel:
    return pb.FeatureLabel(
        index=value.index, label=value.label, notes=value.notes, source=value.source
    )


def _statistics(value: FeatureStatistics) -> pb.CorpusStatistics:
    return pb.CorpusStatistics(
        tokens=value.tokens,
        firing_rate=value.firing_rate,
        max_activation=value.max_activation,
        mean_activation=value.mean_activation,
        quantiles=value.quantiles,
        histogram=pb.FeatureHistogram(bin_edges=value.bin_edges, counts=value.counts),
    )


def _context(value: FeatureContext) -> pb.FeatureContext:
    return pb.FeatureContext(
        tokens=value.tokens,
        activations=value.activations,
        peak=value.peak,
        max_activation=value.max_activation,
    )


def _lens_token(value: LensToken) -> pb.LensToken:
    return pb.LensToken(token=value.token, token_id=value.token_id, logit=value.logit)


def feature(value: Feature) -> pb.Feature:
    message = pb.Feature(
        index=value.index,
        top_contexts=[_context(c) for c in value.top_contexts],
        promoted=[_lens_token(t) for t in value.promoted],
        suppressed=[_lens_token(t) for t in value.suppressed],
        suggested_strength=value.suggested_strength,
    )
    if value.statistics is not None:
        message.statistics.CopyFrom(_statistics(value.statistics))
    if value.label is not None:
        message.label.CopyFrom(label(value.label))
    return message


def _text_hit(hit: TextHit, found: FeatureLabel | None) -> pb.TextFeatureHit:
    message = pb.TextFeatureHit(
        index=hit.index,
        max_activation=hit.max_activation,
        total_activation=hit.total_activation,
        positions=hit.positions,
    )
    if found is not None:
        message.label.CopyFrom(label(found))
    return message


def text_search(value: TextSearch) -> pb.SearchFeaturesByTextResponse:
    return pb.SearchFeaturesByTextResponse(
        tokens=value.tokens, hits=[_text_hit(hit, found) for hit, found in value.hits]
    )


def _contrast_hit(hit: ContrastHit, found: FeatureLabel | None) -> pb.ContrastHit:
    message = pb.ContrastHit(
        index=hit.index,
        auroc=hit.auroc,
        firing_rate_gap=hit.firing_rate_gap,
        mean_positive=hit.mean_positive,
        mean_negative=hit.mean_negative,
        suggested_strength=hit.suggested_strength,
    )
    if found is not None:
        message.label.CopyFrom(label(found))
    return message


def contrast(value: ContrastResult, used: ContrastMeasure) -> pb.ContrastFeaturesResponse:
    return pb.ContrastFeaturesResponse(
        measure=_MEASURE_MESSAGES[used],
        hits=[_contrast_hit(hit, found) for hit, found in value.hits],
    )
