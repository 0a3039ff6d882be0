"""Features of any cached SAE on the served model: statistics, dashboards, search, labels.

Model work (forward passes, the logit lens) runs on the engine's lane as
background work (features/reading.py), so serving goes on; everything else
here blocks a worker thread, never the event loop, except the async entry
points that await the compatibility check every attach runs too.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from inference_service.engine.engine import Engine
from inference_service.errors import InvalidArgumentError, UnavailableError
from inference_service.features import label_files
from inference_service.features.label_files import LabelFormat
from inference_service.features.lens import decoder_row_logits, lens
from inference_service.features.reading import SaeReader, corpus_windows
from inference_service.features.repository import FeatureLabels
from inference_service.features.search import (
    STRENGTH_QUANTILE,
    ContrastMeasure,
    contrast,
    text_hits,
)
from inference_service.features.statistics import (
    HISTOGRAM_BINS,
    PAD_TOKEN,
    CorpusStatistics,
    StatisticsAccumulator,
)
from inference_service.features.store import StatisticsSource, StatisticsStore
from inference_service.features.types import (
    ContrastResult,
    Feature,
    FeatureContext,
    FeatureLabel,
    FeatureStatistics,
    ImportCount,
    LabelSource,
    LensToken,
    TextSearch,
)
from inference_service.host import ModelHost
from inference_service.hub.fetch import TransferCancelled
from inference_service.operations.manager import OperationContext, OperationsManager
from inference_service.operations.types import OperationKind, OperationSnapshot
from inference_service.sae.architectures import Sae
from inference_service.sae.catalog import CachedSae
from inference_service.sae.manager import SaeManager
from inference_service.storage.database import Database
from inference_service.training.corpora import CorpusStore
from inference_service.training.corpus import corpus_files, read_documents
from inference_service.training.self_corpus import generate_corpus, write_jsonl
from inference_service.training.sites import capture_site

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 100_000
DEFAULT_RADIUS = 8
DEFAULT_TOP_CONTEXTS = 10
# Bounds that keep one request's memory and time reasonable.
MAX_RADIUS = 64
MAX_TOP_CONTEXTS = 100
MAX_CONTRAST_TEXTS = 256
# The built-in sample: the served model's own replies to varied prompts, a quarter
# repeated in upper case (training/self_corpus.py), written once per model.
SELF_WRITTEN = "self-written"
_SELF_WRITTEN_PROMPTS = 64
_SELF_WRITTEN_NEW_TOKENS = 96


@dataclass(frozen=True)
class _Ready:
    """A cached SAE checked against the served model, with what reads it."""

    cached: CachedSae
    sha: str
    reader: SaeReader

    @property
    def sae(self) -> Sae:
        return self.reader.sae


class FeatureManager:
    def __init__(
        self,
        db: Database,
        data_dir: Path,
        host: ModelHost,
        saes: SaeManager,
        corpora: CorpusStore,
        operations: OperationsManager,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._db = db
        self._loop = loop
        self._data_dir = data_dir
        self._host = host
        self._saes = saes
        self._corpora = corpora
        self._operations = operations
        self.store = StatisticsStore(data_dir)
        self._lock = threading.Lock()
        # The last SAE read (weights on the CPU) and a tokenizer copy per engine.
        self._loaded: tuple[str, Sae] | None = None
        self._tokenizer: tuple[Engine, Any] | None = None

    # ---- preparing -----------------------------------------------------------------

    async def ready(self, sae_id: str) -> _Ready:
        """The SAE checked against the served model as an attach would check it."""
        compatibility = await self._saes.check(sae_id, "")
        compatibility.raise_first_error()
        assert compatibility.site is not None  # no errors means a site was found
        engine = self._host.require_engine()
        cached = self._saes.catalog.require_ready(sae_id)
        site = capture_site(engine.loaded_model.model, compatibility.site.hook_name, "sae_id")
        sae = await asyncio.to_thread(self._sae, sae_id)
        return _Ready(cached, cached.record.weights_sha256 or "", SaeReader(engine, site, sae))

    def _sae(self, sae_id: str) -> Sae:
        with self._lock:
            if self._loaded is None or self._loaded[0] != sae_id:
                self._loaded = (sae_id, self._saes.catalog.load(sae_id, torch.device("cpu")))
            return self._loaded[1]

    def _shared_tokenizer(self, engine: Engine) -> Any:
        """A copy of the engine's tokenizer for this manager; hold `_lock` while using it."""
        if self._tokenizer is None or self._tokenizer[0] is not engine:
            self._tokenizer = (engine, copy.deepcopy(engine.loaded_model.tokenizer))
        return self._tokenizer[1]

    def _token_strings(self, engine: Engine, ids: list[int]) -> list[str]:
        with self._lock:
            tokenizer = self._shared_tokenizer(engine)
            return [tokenizer.decode([i], skip_special_tokens=False) for i in ids]

    def _encode(self, engine: Engine, texts: list[str]) -> list[list[int]]:
        with self._lock:
            tokenizer = self._shared_tokenizer(engine)
            return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    # ---- corpus statistics -------------------------------------------------------------

    async def start_statistics(
        self,
        sae_id: str,
        corpus_id: str = "",
        *,
        max_tokens: int = 0,
        radius: int = 0,
        top_contexts: int = 0,
        corpus_path: Path | None = None,
    ) -> OperationSnapshot:
        """`corpus_path` (a file or folder on the server) is for the service's own use:
        a finished training run reads its own corpus."""
        ready = await self.ready(sae_id)
        if corpus_id:
            self._corpora.get(corpus_id)  # an unknown corpus fails now, not in the operation
        radius = radius or DEFAULT_RADIUS
        top_contexts = top_contexts or DEFAULT_TOP_CONTEXTS
        if radius > MAX_RADIUS:
            raise InvalidArgumentError(
                f"context_radius is at most {MAX_RADIUS}.", param="context_radius"
            )
        if top_contexts > MAX_TOP_CONTEXTS:
            raise InvalidArgumentError(
                f"top_contexts is at most {MAX_TOP_CONTEXTS}.", param="top_contexts"
            )
        running = self._operations.find_running(OperationKind.FEATURE_STATISTICS, sae_id)
        if running is not None:
            return running
        budget = max_tokens or DEFAULT_MAX_TOKENS

        def work(context: OperationContext) -> None:
            if corpus_path is not None:
                files = corpus_files(corpus_path)
            elif corpus_id:
                files = corpus_files(self._corpora.path(corpus_id))
            else:
                context.progress("the model writes its sample corpus", 0, budget)
                files = [self._self_written(ready.reader.engine)]
            label = corpus_id or (corpus_path.name if corpus_path else SELF_WRITTEN)
            self._compute(ready, files, label, budget, radius, top_contexts, context)

        return self._operations.start(OperationKind.FEATURE_STATISTICS, sae_id, work)

    def _compute(
        self,
        ready: _Ready,
        files: list[Path],
        corpus: str,
        max_tokens: int,
        radius: int,
        top_contexts: int,
        context: OperationContext,
    ) -> None:
        engine = ready.reader.engine
        tokenizer = copy.deepcopy(engine.loaded_model.tokenizer)  # this thread's own
        accumulator = StatisticsAccumulator(ready.sae.d_sae, top_k=top_contexts, radius=radius)
        for windows in corpus_windows(read_documents(files, "text"), tokenizer, max_tokens):
            if context.is_cancelled():
                raise TransferCancelled
            if self._host.engine is not engine:
                raise UnavailableError("The model changed while statistics were computed.")
            acts = ready.reader.activations(windows)
            accumulator.add(windows[:, 1:], acts[:, 1:])
            context.progress("reading the corpus", accumulator.tokens, max_tokens)
        if accumulator.tokens == 0:
            raise InvalidArgumentError("The corpus has no text to read.", param="corpus_id")
        context.progress("saving", accumulator.tokens, accumulator.tokens)
        source = StatisticsSource(
            corpus=corpus,
            model=engine.description.id,
            hook_name=ready.reader.site.hook_name,
        )
        self.store.save(ready.sha, accumulator.result(), source)

    def _self_written(self, engine: Engine) -> Path:
        """The built-in sample for the served model, written on first use and kept."""
        tokenizer = copy.deepcopy(engine.loaded_model.tokenizer)
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in engine.description.id)
        path = self._data_dir / "features" / SELF_WRITTEN / f"{slug}.jsonl"
        if not path.is_file():
            docs = engine.run_background(
                lambda model: generate_corpus(
                    model,
                    tokenizer,
                    n_prompts=_SELF_WRITTEN_PROMPTS,
                    max_new_tokens=_SELF_WRITTEN_NEW_TOKENS,
                    batch_size=_SELF_WRITTEN_PROMPTS,
                    seed=0,
                    upper_fraction=0.25,
                )
            )
            partial = path.with_suffix(".part")
            write_jsonl(docs, partial)
            os.replace(partial, path)
        return path

    def start_after_training(self, sae_id: str, corpus_path: Path) -> None:
        """Starts statistics of a freshly trained SAE over its training corpus; from any
        thread (training's), so a failure to start is logged, not raised."""

        def started(future: Future[OperationSnapshot]) -> None:
            if (error := future.exception()) is not None:
                log.warning("feature statistics of %s did not start: %s", sae_id, error)

        future = asyncio.run_coroutine_threadsafe(
            self.start_statistics(sae_id, corpus_path=corpus_path), self._loop
        )
        future.add_done_callback(started)

    # ---- one feature ---------------------------------------------------------------------

    async def feature(self, sae_id: str, index: int, lens_tokens: int) -> Feature:
        ready = await self.ready(sae_id)
        _check_index(index, ready.sae.d_sae)
        return await asyncio.to_thread(self._feature, ready, index, lens_tokens or 10)

    def _feature(self, ready: _Ready, index: int, lens_tokens: int) -> Feature:
        engine = ready.reader.engine
        row = ready.sae.weights.W_dec[index]
        logits = engine.run_background(lambda model: decoder_row_logits(model, row))
        found = lens(logits, min(lens_tokens, logits.shape[0]))
        statistics = self.store.load_feature(ready.sha, index)
        label = self._db.run(lambda session: FeatureLabels(session).get(ready.sha, index))

        def tokens(pairs: list[tuple[int, float]]) -> list[LensToken]:
            strings = self._token_strings(engine, [i for i, _ in pairs])
            return [LensToken(s, i, v) for s, (i, v) in zip(strings, pairs, strict=True)]

        summary = None if statistics is None else _summary(statistics)
        return Feature(
            index=index,
            statistics=summary,
            top_contexts=[] if statistics is None else self._contexts(engine, statistics),
            promoted=tokens(found.promoted),
            suppressed=tokens(found.suppressed),
            label=label,
            suggested_strength=0.0 if statistics is None else _suggested_strength(statistics),
        )

    def _contexts(self, engine: Engine, statistics: CorpusStatistics) -> list[FeatureContext]:
        out = []
        values = statistics.top_values[0]
        for slot in (values > 0).nonzero().view(-1).tolist():
            ids = statistics.top_token_ids[0, slot]
            inside = ids != PAD_TOKEN
            acts = statistics.top_activations[0, slot][inside].float().tolist()
            peak = int(inside[: statistics.radius].sum())  # the padding before the peak is gone
            out.append(
                FeatureContext(
                    tokens=self._token_strings(engine, ids[inside].tolist()),
                    activations=acts,
                    peak=peak,
                    max_activation=float(values[slot]),
                )
            )
        return out

    # ---- search ----------------------------------------------------------------------------

    async def search_text(self, sae_id: str, text: str, limit: int) -> TextSearch:
        ready = await self.ready(sae_id)
        return await asyncio.to_thread(self._search_text, ready, text, limit or 20)

    def _search_text(self, ready: _Ready, text: str, limit: int) -> TextSearch:
        engine = ready.reader.engine
        [ids] = self._encode(engine, [text])
        if not ids:
            raise InvalidArgumentError("The text is empty.", param="text")
        acts = ready.reader.activations(torch.tensor([ids]))[0]
        hits = text_hits(acts, limit)
        labels = self._labels(ready.sha, [h.index for h in hits])
        return TextSearch(
            tokens=self._token_strings(engine, ids),
            hits=[(h, labels.get(h.index)) for h in hits],
        )

    async def contrast(
        self,
        sae_id: str,
        positives: list[str],
        negatives: list[str],
        *,
        uppercase: bool,
        measure: ContrastMeasure,
        limit: int,
    ) -> ContrastResult:
        if uppercase:
            positives, negatives = [t.upper() for t in positives], positives
        for name, texts in (("positive_texts", positives), ("negative_texts", negatives)):
            if not any(t.strip() for t in texts):
                raise InvalidArgumentError("Send at least one non-empty text.", param=name)
            if len(texts) > MAX_CONTRAST_TEXTS:
                raise InvalidArgumentError(f"Send at most {MAX_CONTRAST_TEXTS} texts.", param=name)
        ready = await self.ready(sae_id)
        return await asyncio.to_thread(
            self._contrast, ready, positives, negatives, measure, limit or 20
        )

    def _contrast(
        self,
        ready: _Ready,
        positives: list[str],
        negatives: list[str],
        measure: ContrastMeasure,
        limit: int,
    ) -> ContrastResult:
        pos = self._text_activations(ready, positives)
        neg = self._text_activations(ready, negatives)
        hits = contrast(pos, neg, measure, min(limit, ready.sae.d_sae))
        labels = self._labels(ready.sha, [h.index for h in hits])
        return ContrastResult([(h, labels.get(h.index)) for h in hits])

    def _text_activations(self, ready: _Ready, texts: list[str]) -> list[Tensor]:
        """[T_i, d_sae] per non-empty text. Texts of a pass are right-padded: the model
        is causal, so padding after a text changes nothing of the text itself."""
        rows = [ids for ids in self._encode(ready.reader.engine, texts) if ids]
        out: list[Tensor] = []
        for start in range(0, len(rows), 8):
            group = rows[start : start + 8]
            width = max(len(r) for r in group)
            batch = torch.tensor([r + [r[-1]] * (width - len(r)) for r in group])
            acts = ready.reader.activations(batch)
            out.extend(acts[i, : len(r)] for i, r in enumerate(group))
        return out

    # ---- labels -------------------------------------------------------------------------------

    def _labels(self, sha: str, indices: list[int]) -> dict[int, FeatureLabel]:
        return self._db.run(lambda session: FeatureLabels(session).for_indices(sha, indices))

    def _labelled(self, sae_id: str) -> tuple[str, int]:
        """The SAE's weights sha256 and width; NOT_FOUND for an unknown SAE."""
        cached = self._saes.catalog.require_ready(sae_id)
        assert cached.spec is not None and cached.spec.d_sae is not None
        return cached.record.weights_sha256 or "", cached.spec.d_sae

    def search_labels(self, sae_id: str, query: str, limit: int) -> list[FeatureLabel]:
        sha, _ = self._labelled(sae_id)
        return self._db.run(
            lambda session: FeatureLabels(session).search(sha, query.strip(), limit or 50)
        )

    def set_label(self, sae_id: str, index: int, label: str, notes: str) -> FeatureLabel | None:
        sha, d_sae = self._labelled(sae_id)
        _check_index(index, d_sae)
        if not label.strip() and not notes.strip():
            self._db.run(lambda session: FeatureLabels(session).delete(sha, index))
            return None
        written = FeatureLabel(index, label.strip(), notes, LabelSource.USER)
        self._db.run(lambda session: FeatureLabels(session).put(sha, written))
        return written

    def export_labels(self, sae_id: str) -> bytes:
        sha, _ = self._labelled(sae_id)
        labels = self._db.run(lambda session: FeatureLabels(session).all_of(sha))
        return label_files.export_labels(sha, labels)

    def import_labels(
        self, sae_id: str, data: bytes, layout: LabelFormat, *, overwrite: bool
    ) -> ImportCount:
        sha, d_sae = self._labelled(sae_id)
        labels = label_files.parse_labels(data, layout, d_sae)

        def write(session: Any) -> int:
            repository = FeatureLabels(session)
            return sum(repository.put(sha, x, overwrite=overwrite) for x in labels)

        imported = self._db.run(write)
        return ImportCount(imported=imported, skipped=len(labels) - imported)


def _check_index(index: int, d_sae: int) -> None:
    if not 0 <= index < d_sae:
        raise InvalidArgumentError(
            f"Feature {index} does not exist; this SAE has features 0 to {d_sae - 1}.",
            param="index",
        )


def _suggested_strength(statistics: CorpusStatistics) -> float:
    """The rule of features/search.py `suggested_strength`, read from the histogram."""
    return float(statistics.quantiles((STRENGTH_QUANTILE,))[0, 0])


def _summary(statistics: CorpusStatistics) -> FeatureStatistics:
    """The first (only) feature of a width-1 `CorpusStatistics`."""
    width = float(statistics.bin_width[0])
    return FeatureStatistics(
        tokens=statistics.tokens,
        firing_rate=int(statistics.firing_count[0]) / max(statistics.tokens, 1),
        max_activation=float(statistics.max_activation[0]),
        mean_activation=float(statistics.mean_nonzero()[0]),
        quantiles=statistics.quantiles()[0].tolist(),
        bin_edges=[width * i for i in range(HISTOGRAM_BINS + 1)],
        counts=statistics.histogram[0].tolist(),
    )
