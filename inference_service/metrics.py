"""Prometheus metrics of the inference service (every name is listed in docs/metrics.md).

Two kinds, to keep the decode loop cheap:

- events are counted where they happen: admissions, token timings and decode
  steps through the engine's `EngineMeter` (a counter increment or a histogram
  observation per token, on the lane thread), training steps through the
  training manager's callback;
- state is read when Prometheus scrapes, by `ServingCollector`: queue, batch and
  KV cache from the engine, the attached SAE from its slot, steering from the
  steering state, training and operations from their managers. Nothing is
  copied into a gauge that could go stale.

Each server has its own `CollectorRegistry` (tests run many servers in one
process; the global registry would refuse the second). `MetricsEndpoint` serves
it over HTTP with prometheus_client's own server, on `MILLM_METRICS_PORT`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inference_service.engine.meter import (
    REFUSED_KV_BUDGET,
    REFUSED_QUEUE_FULL,
    REFUSED_UNLOADING,
    GenerationTrack,
)
from inference_service.engine.types import FinishedEvent, GenerationEvent
from inference_service.host import ModelHost, ModelState
from inference_service.operations.types import OperationSnapshot
from inference_service.sae.active import ActiveSae
from inference_service.steering.state import SteeringState
from inference_service.training.trainer import Metrics as TrainingStep

log = logging.getLogger(__name__)

# Seconds. First tokens include the queue wait and the prefill: from a few ms on a
# GPU to tens of seconds for a long prompt queued on a CPU.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
# One decode step of the batch: about 1 ms for a small model on a GPU, up to a
# second for a large one on a CPU.
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5)
_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
_BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_OUTCOMES = {
    "generation": ("admitted", REFUSED_QUEUE_FULL, REFUSED_KV_BUDGET, REFUSED_UNLOADING),
    "embedding": ("admitted", REFUSED_QUEUE_FULL, REFUSED_UNLOADING),
}


class EngineMetrics:
    """The engine's `EngineMeter`: counts and times generations as they run."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "millm_requests",
            "Requests that reached admission, by kind (generation, embedding) and outcome "
            "(admitted, or the refusal: queue_full, kv_budget, unloading).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "millm_time_to_first_token_seconds",
            "Seconds from a generation's admission to its first token (queue wait and prefill).",
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            "millm_inter_token_latency_seconds",
            "Seconds between two consecutive tokens of one generation.",
            buckets=_ITL_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "millm_generation_duration_seconds",
            "Seconds from a generation's admission to its end, however it ended.",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "millm_prompt_tokens",
            "Prompt tokens prefilled (counted when the first token is out).",
            registry=registry,
        )
        self.prompt_cached_tokens = Counter(
            "millm_prompt_cached_tokens",
            "Prompt tokens whose keys and values came from the prefix cache, not a prefill "
            "(counted when the generation ends).",
            registry=registry,
        )
        self.generation_tokens = Counter(
            "millm_generation_tokens", "Completion tokens generated.", registry=registry
        )
        self.finished = Counter(
            "millm_generations_finished",
            "Generations that ended, by finish reason (stop, length, cancelled, error).",
            ["finish_reason"],
            registry=registry,
        )
        self.batch_rows = Histogram(
            "millm_decode_batch_rows",
            "Sequences decoded together in one batched decode step.",
            buckets=_BATCH_ROW_BUCKETS,
            registry=registry,
        )
        # Every outcome exported from the start (at 0), so rate() sees the first refusal.
        for kind, outcomes in _OUTCOMES.items():
            for outcome in outcomes:
                self.requests.labels(kind, outcome)
        # Children resolved once: a labelled lookup per token costs a dict lookup and a lock.
        self._finished = {
            reason: self.finished.labels(reason)
            for reason in ("stop", "length", "cancelled", "error")
        }

    def admitted(self, kind: str) -> None:
        self.requests.labels(kind, "admitted").inc()

    def refused(self, kind: str, reason: str) -> None:
        self.requests.labels(kind, reason).inc()

    def generation(self, prompt_tokens: int) -> GenerationTrack:
        return _Track(self, prompt_tokens)

    def decode_step(self, rows: int) -> None:
        self.batch_rows.observe(rows)


class _Track:
    """Times one generation; called on the lane thread only."""

    __slots__ = ("_last_ns", "_metrics", "_prompt_tokens", "_started_ns")

    def __init__(self, metrics: EngineMetrics, prompt_tokens: int) -> None:
        self._metrics = metrics
        self._prompt_tokens = prompt_tokens
        self._started_ns = time.perf_counter_ns()
        self._last_ns = 0

    def event(self, event: GenerationEvent) -> None:
        now = time.perf_counter_ns()
        metrics = self._metrics
        if isinstance(event, FinishedEvent):
            metrics.duration.observe((now - self._started_ns) / 1e9)
            metrics._finished[event.finish_reason].inc()
            if event.cached_tokens:
                metrics.prompt_cached_tokens.inc(event.cached_tokens)
            return
        if self._last_ns:
            metrics.inter_token_latency.observe((now - self._last_ns) / 1e9)
        else:
            metrics.time_to_first_token.observe((now - self._started_ns) / 1e9)
            metrics.prompt_tokens.inc(self._prompt_tokens)
        metrics.generation_tokens.inc(len(event.token_ids))
        self._last_ns = now

    def failed(self) -> None:
        metrics = self._metrics
        metrics.duration.observe((time.perf_counter_ns() - self._started_ns) / 1e9)
        metrics._finished["error"].inc()


class TrainingThroughput:
    """SAE training throughput, from the training manager's per-step callback."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.steps = Counter(
            "millm_training_steps", "SAE training steps completed.", registry=registry
        )
        self.tokens = Counter(
            "millm_training_tokens", "Activation rows (tokens) trained on.", registry=registry
        )
        # Read by ServingCollector, which knows whether a run is training now.
        self.latest_tokens_per_s = 0.0

    def on_steps(self, steps: list[TrainingStep]) -> None:
        for step in steps:
            if step["eval"] or not step["step"]:
                continue
            self.steps.inc()
            # `tokens` is cumulative, step x batch_size_tokens: one step adds the batch.
            self.tokens.inc(step["tokens"] // step["step"])
            self.latest_tokens_per_s = float(step["tokens_per_s"])


@dataclass(frozen=True)
class ServingSources:
    """Where `ServingCollector` reads the service's state at scrape time."""

    host: ModelHost
    active_sae: Callable[[], ActiveSae | None]
    steering: SteeringState
    training_run: Callable[[], str | None]  # the id of the run training now
    operations: Callable[[], Iterable[OperationSnapshot]]  # this process's operations


class ServingCollector(Collector):
    """Gauges (and the operation counters) read from live state on every scrape."""

    def __init__(self, sources: ServingSources, training: TrainingThroughput) -> None:
        self._sources = sources
        self._training = training

    def collect(self) -> Iterable[Metric]:
        yield from self._model()
        yield from self._engine()
        yield from self._sae_and_steering()
        yield from self._training_and_operations()

    def _model(self) -> Iterable[Metric]:
        host = self._sources.host
        state = GaugeMetricFamily(
            "millm_model_state",
            "1 for the served model's lifecycle state, 0 for the others.",
            labels=["state"],
        )
        for each in ModelState:
            state.add_metric([each.value], 1.0 if host.state is each else 0.0)
        yield state
        info = GaugeMetricFamily(
            "millm_model_info", "1, labelled with the served model's id.", labels=["model_id"]
        )
        engine = host.engine
        if engine is not None:
            info.add_metric([engine.description.id], 1.0)
        yield info

    def _engine(self) -> Iterable[Metric]:
        engine = self._sources.host.engine
        stats = engine.batch_stats() if engine is not None else None

        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, value=value)

        yield gauge(
            "millm_queue_depth",
            "Requests admitted and not finished (decoding or waiting); 429 at capacity.",
            engine.queue_depth if engine is not None else 0,
        )
        yield gauge(
            "millm_queue_capacity",
            "Requests that may be admitted at once (MILLM_MAX_QUEUE).",
            engine.max_queue if engine is not None else 0,
        )
        yield gauge(
            "millm_requests_waiting",
            "Admitted generations not decoding yet.",
            stats.waiting if stats else 0,
        )
        yield gauge(
            "millm_requests_running",
            "Sequences in the decoding batch now.",
            stats.active if stats else 0,
        )
        yield gauge(
            "millm_batch_max_rows",
            "Sequences one decode step may hold (MILLM_MAX_BATCH_SIZE).",
            stats.max_batch_size if stats else 0,
        )
        yield gauge(
            "millm_batch_occupancy_ratio",
            "Sequences in the decoding batch now / MILLM_MAX_BATCH_SIZE.",
            stats.active / stats.max_batch_size if stats else 0.0,
        )
        yield gauge(
            "millm_kv_cache_used_bytes",
            "Bytes the decoding batch's KV cache holds now (padding included).",
            stats.kv_cache_used_bytes if stats else 0,
        )
        yield gauge(
            "millm_kv_cache_reserved_bytes",
            "KV cache bytes the running sequences may reach at their longest; what "
            "admission counts against the capacity.",
            stats.kv_cache_bytes if stats else 0,
        )
        yield gauge(
            "millm_kv_cache_capacity_bytes",
            "KV cache budget of the decoding batch (MILLM_KV_CACHE_MB, or a quarter of free "
            "memory at load).",
            stats.kv_cache_budget_bytes if stats else 0,
        )

    def _sae_and_steering(self) -> Iterable[Metric]:
        active = self._sources.active_sae()
        yield GaugeMetricFamily(
            "millm_sae_attached",
            "1 while an SAE is attached to the model.",
            value=int(active is not None),
        )
        info = GaugeMetricFamily(
            "millm_sae_info",
            "1, labelled with the attached SAE, its hook site and the model it sits on.",
            labels=["sae_id", "sae_name", "hook", "model"],
        )
        if active is not None:
            labels = [active.sae_id, active.sae_name, active.hook_name, active.model_name]
            info.add_metric(labels, 1)
        yield info
        yield GaugeMetricFamily(
            "millm_sae_features",
            "Features (d_sae) of the attached SAE; 0 when none is attached.",
            value=active.d_sae if active is not None else 0,
        )
        steering = self._sources.steering
        effective = steering.effective_for(active)
        steered = sum(not f.is_identity() for f in effective.features) if effective.enabled else 0
        yield GaugeMetricFamily(
            "millm_steering_active",
            "1 while requests without steering of their own are steered (the active profile "
            "or the live features).",
            value=int(effective.active),
        )
        yield GaugeMetricFamily(
            "millm_steering_features",
            "Features that global steering changes now.",
            value=steered,
        )
        profile = GaugeMetricFamily(
            "millm_steering_profile_info",
            "1, labelled with the active steering profile, while one is active.",
            labels=["profile"],
        )
        if active is not None and steering.active_profile is not None:
            profile.add_metric([steering.active_profile.name], 1)
        yield profile

    def _training_and_operations(self) -> Iterable[Metric]:
        training = self._sources.training_run() is not None
        yield GaugeMetricFamily(
            "millm_training_active", "1 while an SAE training run trains.", value=int(training)
        )
        yield GaugeMetricFamily(
            "millm_training_tokens_per_second",
            "Throughput of the running training's latest step; 0 when none is training.",
            value=self._training.latest_tokens_per_s if training else 0.0,
        )
        finished = CounterMetricFamily(
            "millm_operations_finished",
            "Long operations (downloads, uploads, training, feature statistics) that ended "
            "since the service started, by kind and final state.",
            labels=["kind", "state"],
        )
        running = GaugeMetricFamily(
            "millm_operations_running", "Long operations running now, by kind.", labels=["kind"]
        )
        transferred = CounterMetricFamily(
            "millm_operation_bytes",
            "Bytes done by this process's downloads and uploads, by kind (a resumed "
            "download counts the part it found on disk).",
            labels=["kind"],
        )
        ended: dict[tuple[str, str], int] = {}
        live: dict[str, int] = {}
        done_bytes: dict[str, int] = {}
        for op in self._sources.operations():
            if op.done:
                key = (op.kind, op.state.value)
                ended[key] = ended.get(key, 0) + 1
            else:
                live[op.kind] = live.get(op.kind, 0) + 1
            if op.bytes_done:
                done_bytes[op.kind] = done_bytes.get(op.kind, 0) + op.bytes_done
        for (kind, state), count in sorted(ended.items()):
            finished.add_metric([kind, state], count)
        for kind, count in sorted(live.items()):
            running.add_metric([kind], count)
        for kind, count in sorted(done_bytes.items()):
            transferred.add_metric([kind], count)
        yield finished
        yield running
        yield transferred


class ServiceMetrics:
    """The inference service's registry and what feeds it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.engine = EngineMetrics(self.registry)
        self.training = TrainingThroughput(self.registry)

    def watch(self, sources: ServingSources) -> None:
        """Reads the service's state at every scrape from now on."""
        self.registry.register(ServingCollector(sources, self.training))


class MetricsEndpoint:
    """prometheus_client's HTTP server for one registry, on a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise OSError(
                f"Cannot serve metrics on {host}:{port} ({exc.strerror or exc}); set "
                "MILLM_METRICS_PORT to a free port, or to 0 to turn the metrics endpoint off."
            ) from exc
        self.port = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        server: WSGIServer = self._server
        server.shutdown()
        server.server_close()
        thread: threading.Thread = self._thread
        thread.join(5)
