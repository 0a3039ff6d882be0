"""Training runs: start, stop, resume, delete, watch; one run trains at a time.

Sharing the machine with inference (documented in docs/training.md): requests
go first. The trainer's thread waits while any request is admitted before each
optimizer step and before each harvest slice, and harvests run on the model's
worker lane as background jobs of `harvest_batch_windows` windows, so a request
that arrives mid-harvest waits for at most one slice. A request that arrives
mid-step shares the CPU with that one step only.

Runs live in the database; metrics are buffered and written about once a second;
checkpoints live under `data_dir/training/runs/<id>/checkpoints`. A run that was
training when the service stopped is marked interrupted at start-up and resumes
from its last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session
from torch import Tensor

from inference_service.engine.engine import Engine
from inference_service.errors import (
    InvalidArgumentError,
    NoModelLoadedError,
    NotFoundError,
    TrainingBusyError,
    UnavailableError,
)
from inference_service.host import ModelHost
from inference_service.sae.catalog import SaeCatalog
from inference_service.sae.hook_sites import hidden_size
from inference_service.storage.database import Database
from inference_service.training.activations import (
    ActivationSource,
    BatchStream,
    CachedActivations,
    Cursor,
    LiveActivations,
    store_device,
)
from inference_service.training.config import ModelFacts, TrainingConfig, resolve
from inference_service.training.corpora import CorpusStore
from inference_service.training.corpus import (
    Windows,
    corpus_files,
    read_documents,
    resolve_path,
    tokenize_windows,
)
from inference_service.training.output import write_output
from inference_service.training.repository import TrainingMetrics, TrainingRuns
from inference_service.training.sites import CaptureSite, capture, capture_site
from inference_service.training.trainer import (
    Metrics,
    StopRequested,
    Trainer,
    TrainerHooks,
    total_steps,
)
from inference_service.training.types import TrainingRun, TrainingState

log = logging.getLogger(__name__)

# Held-out rows used for evaluation and feature statistics, at most.
_EVAL_MAX_WINDOWS = 256
# Rows per shuffling chunk, in batches: larger mixes better, costs memory.
_CHUNK_BATCHES = 16
_METRICS_FLUSH_S = 1.0
_IDLE_POLL_S = 0.05
_PAUSED_STAGE = "paused for inference"


@dataclass(frozen=True)
class TrainingRunChanged:
    """A run's new state, or its deletion (an event)."""

    run_id: str
    state: TrainingState | None  # None once deleted


@dataclass
class _Active:
    run_id: str
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    stage: str = ""


class TrainingManager:
    def __init__(
        self,
        db: Database,
        data_dir: Path,
        host: ModelHost,
        saes: SaeCatalog,
        corpora: CorpusStore,
        loop: asyncio.AbstractEventLoop,
        *,
        data_root: Path | None,
        on_sae_trained: Callable[[str, Path], None] = lambda sae_id, corpus: None,
        publish: Callable[[TrainingRunChanged], None] = lambda event: None,
        on_metrics: Callable[[list[Metrics]], None] = lambda metrics: None,
    ) -> None:
        """`on_sae_trained(sae_id, corpus)` runs (on the run's thread) after a run has
        saved its SAE; the server starts the SAE's feature statistics from it.
        `publish` is told every change of a run's state (from any thread).
        `on_metrics` sees every step's metrics as they come (on the run's thread)."""
        self._publish = publish
        self._db = db
        self._root = data_dir / "training"
        self._host = host
        self._saes = saes
        self._corpora = corpora
        self._loop = loop
        self._data_root = data_root
        self._on_sae_trained = on_sae_trained
        self._on_metrics = on_metrics
        self._lock = threading.Lock()
        self._active: _Active | None = None
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._pending_metrics: list[Metrics] = []

    # ---- start-up ------------------------------------------------------------------

    def recover(self) -> int:
        """Marks runs cut short by the last stop as interrupted (resumable)."""
        return self._db.run(lambda session: TrainingRuns(session).mark_interrupted())

    # ---- reading ---------------------------------------------------------------------

    def get(self, run_id: str) -> TrainingRun:
        record = self._db.run(lambda session: TrainingRuns(session).get(run_id))
        if record is None:
            raise NotFoundError(
                f"No training run has the id '{run_id}'; list them with "
                "TrainingService.ListTrainingRuns.",
                param="id",
            )
        return record

    def list_runs(self, limit: int, offset: int) -> tuple[list[TrainingRun], int]:
        def read(session: Session) -> tuple[list[TrainingRun], int]:
            runs = TrainingRuns(session)
            return list(runs.list(limit, offset)), runs.count()

        return self._db.run(read)

    def metrics(self, run_id: str, after_step: int, limit: int) -> list[Metrics]:
        self.get(run_id)
        self._flush_metrics(run_id)
        return self._db.run(
            lambda session: TrainingMetrics(session).list(run_id, after_step, limit)
        )

    def _stored_metrics(self, run_id: str, after_step: int) -> list[Metrics]:
        return self._db.run(
            lambda session: TrainingMetrics(session).list(run_id, after_step, 10_000)
        )

    @property
    def active_run_id(self) -> str | None:
        with self._lock:
            return self._active.run_id if self._active else None

    # ---- lifecycle -----------------------------------------------------------------

    def start(self, name: str, config: TrainingConfig) -> TrainingRun:
        engine = self._engine()
        resolved = resolve(config, self._facts(engine, config))
        self._check_sources(engine, resolved)
        run_id = uuid.uuid4().hex
        with self._lock:
            self._refuse_if_busy()
            record = self._db.run(
                lambda session: TrainingRuns(session).create(
                    record_id=run_id,
                    name=name.strip() or _default_name(resolved),
                    model=engine.description.id,
                    config=resolved.to_json(),
                    total_steps=0,
                ),
            )
            self._publish(TrainingRunChanged(run_id, TrainingState.QUEUED))
            self._launch(record, resume=False)
        return self.get(run_id)

    def resume(self, run_id: str, *, from_scratch: bool) -> TrainingRun:
        record = self.get(run_id)
        if record.state not in (
            TrainingState.STOPPED,
            TrainingState.FAILED,
            TrainingState.INTERRUPTED,
        ):
            raise InvalidArgumentError(
                f"Run '{run_id}' is {record.state.value}; only stopped, failed or interrupted "
                "runs resume.",
                param="id",
            )
        engine = self._engine()
        if engine.description.id != record.model:
            raise InvalidArgumentError(
                f"Run '{run_id}' trains on {record.model}, but {engine.description.id} is "
                f"loaded; load {record.model} to resume it.",
                param="id",
            )
        with self._lock:
            self._refuse_if_busy()
            if from_scratch:
                shutil.rmtree(self._run_dir(run_id) / "checkpoints", ignore_errors=True)
                self._db.run(lambda session: TrainingMetrics(session).delete_for_run(run_id))
            self._update(run_id, state=TrainingState.QUEUED, error="", stage="queued")
            self._launch(self.get(run_id), resume=not from_scratch)
        return self.get(run_id)

    def stop(self, run_id: str) -> TrainingRun:
        record = self.get(run_id)
        with self._lock:
            active = self._active if self._active and self._active.run_id == run_id else None
            if active is None:
                if record.state is TrainingState.QUEUED:  # a leftover record nobody runs
                    self._update(run_id, state=TrainingState.STOPPED, stage="stopped")
                return self.get(run_id)
            active.stop.set()
        self._update(run_id, state=TrainingState.STOPPING, stage="stopping at the next step")
        return self.get(run_id)

    def delete(self, run_id: str) -> int:
        self.get(run_id)
        if self.active_run_id == run_id:
            raise TrainingBusyError(
                f"Run '{run_id}' is training; stop it (StopTraining) and delete it after.",
                param="id",
            )
        folder = self._run_dir(run_id)
        freed = (
            sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            if folder.exists()
            else 0
        )
        shutil.rmtree(folder, ignore_errors=True)
        self._db.run(lambda session: TrainingRuns(session).delete(run_id))
        self._wake(run_id)
        self._publish(TrainingRunChanged(run_id, None))
        return freed

    def wait(self, timeout_s: float | None = None) -> None:
        """Blocks until the active run's thread ends (tests and shutdown)."""
        with self._lock:
            thread = self._active.thread if self._active else None
        if thread is not None:
            thread.join(timeout_s)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stops the active run with a checkpoint, so it resumes after a restart."""
        with self._lock:
            active = self._active
        if active is not None:
            active.stop.set()
            if active.thread is not None:
                active.thread.join(timeout_s)

    async def watch(self, run_id: str) -> AsyncIterator[tuple[TrainingRun, list[Metrics]]]:
        """The run and its stored metrics, then each change, until it finishes."""
        event = asyncio.Event()
        self._watchers.setdefault(run_id, set()).add(event)
        # An eval is stored after the train step it shares a number with, so the
        # last step is read again and what was already sent is left out.
        last_step, sent_at_last = -1, set[bool]()
        try:
            while True:
                event.clear()
                record = await asyncio.to_thread(self.get, run_id)
                stored = await asyncio.to_thread(self._stored_metrics, run_id, last_step - 1)
                fresh = [
                    m
                    for m in stored
                    if m["step"] > last_step
                    or (m["step"] == last_step and m["eval"] not in sent_at_last)
                ]
                if fresh:
                    top = max(int(m["step"]) for m in fresh)
                    if top != last_step:
                        last_step, sent_at_last = top, set()
                    sent_at_last |= {bool(m["eval"]) for m in fresh if m["step"] == top}
                yield record, fresh
                if record.finished:
                    return
                await event.wait()
        finally:
            self._watchers[run_id].discard(event)

    # ---- internals -------------------------------------------------------------------

    def _engine(self) -> Engine:
        engine = self._host.engine
        if engine is None:
            raise NoModelLoadedError("Load a model first: training reads its activations.")
        return engine

    def _facts(self, engine: Engine, config: TrainingConfig) -> ModelFacts:
        model = engine.loaded_model.model
        d_in = hidden_size(model)
        return ModelFacts(d_in=d_in, d_out=d_in, max_context=engine.description.max_context_tokens)

    def _check_sources(self, engine: Engine, config: TrainingConfig) -> None:
        """Hook sites and corpus checked before a run is recorded, so a typo is a 400."""
        model = engine.loaded_model.model
        capture_site(model, config.hook_name, "hook_name")
        if config.is_transcoder:
            capture_site(model, config.hook_name_out, "hook_name_out")
        self._corpus_path(config)

    def _corpus_path(self, config: TrainingConfig) -> Path:
        if config.corpus_id:
            return self._corpora.path(config.corpus_id)
        return resolve_path(self._data_root, config.corpus_path)

    def _refuse_if_busy(self) -> None:
        if self._active is not None:
            raise TrainingBusyError(
                f"Run '{self._active.run_id}' is training; one run trains at a time. Stop it "
                "(StopTraining) or wait for it to finish.",
                param="id",
            )

    def _launch(self, record: TrainingRun, *, resume: bool) -> None:
        active = _Active(record.id)
        active.thread = threading.Thread(
            target=self._execute,
            args=(active, resume),
            name=f"millm-training-{record.id[:8]}",
            daemon=True,
        )
        self._active = active
        active.thread.start()

    def _run_dir(self, run_id: str) -> Path:
        return self._root / "runs" / run_id

    def _update(self, run_id: str, **fields: Any) -> None:
        self._db.run(lambda session: TrainingRuns(session).update(run_id, **fields))
        self._wake(run_id)
        if "state" in fields:
            self._publish(TrainingRunChanged(run_id, fields["state"]))

    def _wake(self, run_id: str) -> None:
        def wake() -> None:
            for event in self._watchers.get(run_id, ()):
                event.set()

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody watches
            self._loop.call_soon_threadsafe(wake)

    def _flush_metrics(self, run_id: str) -> None:
        with self._lock:
            pending, self._pending_metrics = self._pending_metrics, []
        if pending:
            self._db.run(lambda session: TrainingMetrics(session).add(run_id, pending))

    def _execute(self, active: _Active, resume: bool) -> None:
        run_id = active.run_id
        try:
            self._update(run_id, state=TrainingState.RUNNING, stage="reading the corpus")
            outcome = self._train(active, resume)
            if outcome == "stopped":
                self._update(run_id, state=TrainingState.STOPPED, stage="stopped")
            else:
                self._update(run_id, state=TrainingState.COMPLETED, stage="completed")
        except StopRequested:
            self._update(run_id, state=TrainingState.STOPPED, stage="stopped")
        except Exception as exc:
            log.exception("training run %s failed", run_id)
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            self._update(
                run_id,
                state=TrainingState.FAILED,
                stage="failed",
                error=message[:2000],
            )
        finally:
            self._flush_metrics(run_id)
            with self._lock:
                if self._active is active:
                    self._active = None
            self._wake(run_id)

    def _train(self, active: _Active, resume: bool) -> str:
        run_id = active.run_id
        record = self.get(run_id)
        config = TrainingConfig.from_json(record.config)
        engine = self._engine()
        tokenizer = copy.deepcopy(engine.loaded_model.tokenizer)  # never shared across threads
        model = engine.loaded_model.model
        sites = [capture_site(model, config.hook_name, "hook_name")]
        if config.is_transcoder:
            sites.append(capture_site(model, config.hook_name_out, "hook_name_out"))
        files = corpus_files(self._corpus_path(config))
        windows = tokenize_windows(
            read_documents(files, config.text_field),
            tokenizer,
            context_size=config.context_size,
            prepend_bos=config.prepend_bos,
            eval_fraction=config.eval_fraction,
            seed=config.seed,
        )
        rows_per_window = config.context_size - (0 if config.keep_first_position else 1)
        chunk_windows = max(1, _CHUNK_BATCHES * config.batch_size_tokens // rows_per_window)
        # Training runs on the model's device; the chunk of activations stays there
        # when it fits (activations.store_device), else in pinned host memory.
        device = engine.loaded_model.device
        chunk_bytes = chunk_windows * rows_per_window * hidden_size(model) * 4 * len(sites)
        store = store_device(device, chunk_bytes)
        if store != device:
            log.info(
                "run %s keeps its %d MiB activation chunks in pinned host memory",
                run_id,
                chunk_bytes >> 20,
            )
        harvest = self._harvester(active, engine, sites, store)
        steps = total_steps(config, len(windows.train) * rows_per_window)
        if steps < 1:
            raise InvalidArgumentError(
                f"The corpus gives {len(windows.train) * rows_per_window} training tokens, "
                f"fewer than one batch of {config.batch_size_tokens}; add text or lower "
                "batch_size_tokens.",
                param="batch_size_tokens",
            )
        self._update(run_id, total_steps=steps, stage="harvesting held-out activations")
        eval_live = LiveActivations(
            harvest, windows.eval, config.harvest_batch_windows, config.keep_first_position
        )
        eval_rows = eval_live.rows(torch.arange(min(len(windows.eval), _EVAL_MAX_WINDOWS)))
        source = self._source(active, config, windows, sites, harvest, engine, rows_per_window)
        stream = BatchStream(
            source,
            len(windows.train),
            batch_size=config.batch_size_tokens,
            chunk_windows=chunk_windows,
            seed=config.seed,
            start=Cursor(),
            device=device,
            store=store,
        )
        trainer = Trainer(
            config,
            d_in=eval_rows[0].shape[1],
            d_out=eval_rows[1].shape[1],
            stream=stream,
            eval_rows=eval_rows,
            steps=steps,
            checkpoint_dir=self._run_dir(run_id) / "checkpoints",
            device=device,
        )
        if resume and trainer.resume_from_latest():
            log.info("run %s resumes at step %d", run_id, trainer.step)
        self._update(run_id, stage="training", step=trainer.step)
        outcome = trainer.run(self._hooks(active, engine))
        if outcome.stopped:
            return "stopped"
        self._update(run_id, stage="saving", step=outcome.step, final_eval=outcome.final_eval)
        self._flush_metrics(run_id)
        sae_id = self._save(record, config, outcome, sites)
        self._update(run_id, sae_id=sae_id)
        if sae_id:
            self._on_sae_trained(sae_id, self._corpus_path(config))
        return "completed"

    def _source(
        self,
        active: _Active,
        config: TrainingConfig,
        windows: Windows,
        sites: list[CaptureSite],
        harvest: Callable[[Tensor], list[Tensor]],
        engine: Engine,
        rows_per_window: int,
    ) -> ActivationSource:
        live = LiveActivations(
            harvest, windows.train, config.harvest_batch_windows, config.keep_first_position
        )
        if not config.cache_activations:
            return live
        key = hashlib.sha256(
            json.dumps(
                [
                    engine.description.id,
                    [s.hook_name for s in sites],
                    windows.fingerprint,
                    config.seed,
                    config.eval_fraction,
                    config.keep_first_position,
                ]
            ).encode()
        ).hexdigest()[:32]
        folder = self._root / "activation_cache" / key
        if not CachedActivations.is_complete(folder):

            def progress(done: int, total: int) -> None:
                self._update(active.run_id, stage=f"caching activations ({done}/{total} windows)")

            if not CachedActivations.build(
                folder, live, len(windows.train), progress, active.stop.is_set
            ):
                raise StopRequested
        return CachedActivations(folder, rows_per_window)

    def _harvester(
        self, active: _Active, engine: Engine, sites: list[CaptureSite], store: torch.device
    ) -> Callable[[Tensor], list[Tensor]]:
        def harvest(windows: Tensor) -> list[Tensor]:
            self._wait_for_turn(active, engine)
            if active.stop.is_set():
                raise StopRequested  # do not finish the chunk: the stop wins at once
            if self._host.engine is not engine:
                raise UnavailableError(
                    "The model changed while training ran; load it again and resume the run."
                )
            return engine.run_background(lambda model: capture(model, sites, windows, store))

        return harvest

    def _wait_for_turn(self, active: _Active, engine: Engine) -> None:
        """Blocks while inference requests are admitted: they always go first."""
        paused = False
        while engine.queue_depth > 0 and not active.stop.is_set():
            if not paused:
                paused = True
                previous, active.stage = active.stage, _PAUSED_STAGE
                self._update(active.run_id, stage=_PAUSED_STAGE)
            time.sleep(_IDLE_POLL_S)
        if paused:
            active.stage = previous
            self._update(active.run_id, stage=previous or "training")

    def _hooks(self, active: _Active, engine: Engine) -> TrainerHooks:
        run_id = active.run_id
        last_flush = [time.monotonic()]
        active.stage = "training"

        latest: list[Metrics | None] = [None]

        def publish(**fields: Any) -> None:
            self._flush_metrics(run_id)
            if latest[0] is not None:
                fields["latest"] = latest[0]
            self._update(run_id, **fields)

        def on_metrics(metrics: list[Metrics]) -> None:
            self._on_metrics(metrics)
            with self._lock:
                self._pending_metrics.extend(metrics)
            latest[0] = next((m for m in reversed(metrics) if not m["eval"]), latest[0])
            now = time.monotonic()
            if now - last_flush[0] >= _METRICS_FLUSH_S or any(m["eval"] for m in metrics):
                last_flush[0] = now
                publish(step=int(metrics[-1]["step"]))

        def on_checkpoint(step: int) -> None:
            publish(checkpoint_step=step, step=step)

        return TrainerHooks(
            should_stop=active.stop.is_set,
            wait_for_turn=lambda: self._wait_for_turn(active, engine),
            on_metrics=on_metrics,
            on_checkpoint=on_checkpoint,
        )

    def _save(
        self,
        record: TrainingRun,
        config: TrainingConfig,
        outcome: Any,
        sites: list[CaptureSite],
    ) -> str:
        assert outcome.statistics is not None
        run_info = {
            "run_id": record.id,
            "name": record.name,
            "config": config.to_json(),
            "final_eval": outcome.final_eval,
            "steps": outcome.step,
        }
        common = dict(
            config=config,
            sae=outcome.sae,
            scale_in=outcome.scale_in,
            scale_out=outcome.scale_out,
            statistics=outcome.statistics,
            model_name=record.model,
            hook_name=sites[0].hook_name,
            hook_name_out=sites[-1].hook_name,
            run=run_info,
        )
        if config.is_transcoder:
            # miLLM attaches SAEs, not transcoders: the files stay with the run,
            # in the SAELens layout, for export.
            write_output(self._run_dir(record.id) / "output", **common)
            return ""
        sae_id, folder = self._saes.trained_folder()
        write_output(folder, **common)
        self._saes.register_trained(sae_id, folder, name=record.name, run_id=record.id)
        return sae_id


def _default_name(config: TrainingConfig) -> str:
    kind = "transcoder" if config.is_transcoder else "sae"
    return f"{config.architecture}-{kind}-{config.d_sae}-{config.hook_name}"
