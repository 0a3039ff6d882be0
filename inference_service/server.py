"""Builds and runs the gRPC server: services, health, reflection, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from inference_service.config import InferenceSettings
from inference_service.errors import MillmError
from inference_service.events import EventBus
from inference_service.features.manager import FeatureManager
from inference_service.host import ModelHost, ModelState, ModelStateChanged
from inference_service.interceptors import AuthInterceptor, ErrorInterceptor
from inference_service.metrics import MetricsEndpoint, ServiceMetrics, ServingSources
from inference_service.models.catalog import ModelCatalog
from inference_service.models.manager import ModelManager
from inference_service.monitoring.hub import MonitorHub
from inference_service.operations.manager import OperationsManager
from inference_service.operations.store import DatabaseOperationStore
from inference_service.profiles import ProfileManager
from inference_service.sae.active import ActiveSaeSlot
from inference_service.sae.attachment_history import AttachmentHistory
from inference_service.sae.catalog import SaeCatalog
from inference_service.sae.manager import Followers, RestoreState, SaeManager
from inference_service.servicers.events import EventServicer
from inference_service.servicers.features import FeatureServicer
from inference_service.servicers.inference import InferenceServicer
from inference_service.servicers.models import ModelServicer
from inference_service.servicers.monitoring import MonitoringServicer
from inference_service.servicers.operations import OperationsServicer
from inference_service.servicers.profiles import ProfileServicer
from inference_service.servicers.saes import SaeServicer
from inference_service.servicers.steering import SteeringServicer
from inference_service.servicers.training import TrainingServicer
from inference_service.shutdown import ShutdownGate
from inference_service.steering import persisted
from inference_service.steering.runtime import SteeringRuntime
from inference_service.steering.state import SteeringState
from inference_service.storage.database import Database, resolve_url
from inference_service.storage.orphans import sweep_orphans
from inference_service.training.corpora import CorpusStore
from inference_service.training.manager import TrainingManager
from inference_service.training.templates import TemplateStore
from millm.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    feature_service_pb2,
    feature_service_pb2_grpc,
    inference_service_pb2,
    inference_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    monitoring_service_pb2,
    monitoring_service_pb2_grpc,
    operations_service_pb2,
    operations_service_pb2_grpc,
    profile_service_pb2,
    profile_service_pb2_grpc,
    sae_service_pb2,
    sae_service_pb2_grpc,
    steering_service_pb2,
    steering_service_pb2_grpc,
    training_service_pb2,
    training_service_pb2_grpc,
)

log = logging.getLogger(__name__)

INFERENCE_SERVICE = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
OPERATIONS_SERVICE = operations_service_pb2.DESCRIPTOR.services_by_name[
    "OperationsService"
].full_name
SAE_SERVICE = sae_service_pb2.DESCRIPTOR.services_by_name["SaeService"].full_name
STEERING_SERVICE = steering_service_pb2.DESCRIPTOR.services_by_name["SteeringService"].full_name
PROFILE_SERVICE = profile_service_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name
TRAINING_SERVICE = training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name
FEATURE_SERVICE = feature_service_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name
EVENT_SERVICE = event_service_pb2.DESCRIPTOR.services_by_name["EventService"].full_name
MONITORING_SERVICE = monitoring_service_pb2.DESCRIPTOR.services_by_name[
    "MonitoringService"
].full_name
# After a shutdown's grace: the longest the ended calls' last messages may take to
# flush before the server closes its connections (see InferenceServer.stop).
_FLUSH_S = 5.0
# Long generations stream slowly; keepalive pings keep idle-looking connections open.
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class InferenceServer:
    """The running service: a gRPC server plus the model host."""

    def __init__(self, settings: InferenceSettings) -> None:
        """Builds everything; call from a running event loop."""
        self.settings = settings
        self._health = health.aio.HealthServicer()
        # Every state change below is published here, for EventService.WatchEvents.
        self.events = EventBus(asyncio.get_running_loop())
        # Its own registry: tests run many servers in one process.
        self.metrics = ServiceMetrics()
        self.host = ModelHost(
            settings, on_state_change=self._on_model_state, meter=self.metrics.engine
        )
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(resolve_url(settings.database_url, settings.data_dir))
        self.db.migrate()
        # Before anything can start an import or a download that would look orphaned.
        sweep_orphans(self.db, settings.data_dir)
        store = DatabaseOperationStore(self.db)
        if interrupted := store.fail_interrupted():
            log.warning(
                "%d operations were cut short by the last stop; start them again to resume",
                interrupted,
            )
        self.operations = OperationsManager(
            store, asyncio.get_running_loop(), publish=self.events.publish
        )
        self.catalog = ModelCatalog(
            self.db, settings.data_dir, self.operations, hub_endpoint=settings.hf_endpoint or None
        )
        self.catalog.reconcile()
        # What forward passes, steering and monitoring know of the attached SAE.
        self.active_sae = ActiveSaeSlot()
        self.monitor = MonitorHub(
            asyncio.get_running_loop(),
            history_frames=settings.monitor_history_frames,
            subscriber_queue_frames=settings.monitor_queue_frames,
        )
        self.steering_state = SteeringState(self.active_sae.get, self.events.publish)
        self.profiles = ProfileManager(
            self.db,
            self.steering_state,
            served_model=self._served_model_id,
            publish=self.events.publish,
        )
        self.steering = SteeringRuntime(self.steering_state, self.profiles.resolve, self.monitor)
        self.saes = SaeManager(
            SaeCatalog(
                self.db,
                settings.data_dir,
                self.operations,
                hub_endpoint=settings.hf_endpoint or None,
            ),
            self.host,
            self.active_sae,
            Followers(
                forget_compiled_steering=self.steering.forget,
                reset_monitor=self.monitor.reset,
                forget_steering=self.steering_state.forget_target,
                restore_profile=self.profiles.restore_active,
            ),
            AttachmentHistory(self.db),
            publish=self.events.publish,
        )
        self.saes.catalog.reconcile()
        corpora = CorpusStore(self.db, settings.data_dir, settings.training_max_corpus_bytes)
        self.features = FeatureManager(
            self.db,
            settings.data_dir,
            self.host,
            self.saes,
            corpora,
            self.operations,
            asyncio.get_running_loop(),
        )
        self.training = TrainingManager(
            self.db,
            settings.data_dir,
            self.host,
            self.saes.catalog,
            corpora,
            asyncio.get_running_loop(),
            data_root=settings.training_data_root,
            on_sae_trained=self.features.start_after_training,
            publish=self.events.publish,
            on_metrics=self.metrics.training.on_steps,
        )
        self.metrics.watch(
            ServingSources(
                host=self.host,
                active_sae=self.active_sae.get,
                steering=self.steering_state,
                training_run=lambda: self.training.active_run_id,
                operations=self.operations.live_snapshots,
            )
        )
        if interrupted_runs := self.training.recover():
            log.warning(
                "%d training runs were cut short by the last stop; resume them with ResumeTraining",
                interrupted_runs,
            )
        # First, so its wrapper is outermost and sees the cancellations it causes.
        self._gate = ShutdownGate(awaited_prefixes=(f"/{INFERENCE_SERVICE}/",))
        interceptors: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor()]
        if settings.api_key:
            interceptors.insert(0, AuthInterceptor(settings.api_key))
        interceptors.insert(0, self._gate)
        self._server = grpc.aio.server(interceptors=interceptors, options=_CHANNEL_OPTIONS)
        inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(self.host, self.steering), self._server
        )
        steering_service_pb2_grpc.add_SteeringServiceServicer_to_server(
            SteeringServicer(self.steering_state, self.monitor, self._save_live_steering),
            self._server,
        )
        profile_service_pb2_grpc.add_ProfileServiceServicer_to_server(
            ProfileServicer(self.profiles), self._server
        )
        monitoring_service_pb2_grpc.add_MonitoringServiceServicer_to_server(
            MonitoringServicer(self.monitor, self.active_sae.get), self._server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(ModelManager(self.host, self.catalog), self.catalog), self._server
        )
        sae_service_pb2_grpc.add_SaeServiceServicer_to_server(SaeServicer(self.saes), self._server)
        training_service_pb2_grpc.add_TrainingServiceServicer_to_server(
            TrainingServicer(self.training, TemplateStore(self.db), corpora), self._server
        )
        feature_service_pb2_grpc.add_FeatureServiceServicer_to_server(
            FeatureServicer(self.features), self._server
        )
        operations_service_pb2_grpc.add_OperationsServiceServicer_to_server(
            OperationsServicer(self.operations), self._server
        )
        event_service_pb2_grpc.add_EventServiceServicer_to_server(
            EventServicer(self.events), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [
                INFERENCE_SERVICE,
                MODEL_SERVICE,
                OPERATIONS_SERVICE,
                SAE_SERVICE,
                STEERING_SERVICE,
                PROFILE_SERVICE,
                MONITORING_SERVICE,
                TRAINING_SERVICE,
                FEATURE_SERVICE,
                EVENT_SERVICE,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ],
            self._server,
        )
        self.port = self._server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
        self._load_task: asyncio.Task[None] | None = None
        self._restore_task: asyncio.Task[None] | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None

    @property
    def metrics_port(self) -> int | None:
        """The port /metrics is served on, once started; None when turned off."""
        return self._metrics_endpoint.port if self._metrics_endpoint is not None else None

    def _served_model_id(self) -> str | None:
        engine = self.host.engine
        return engine.description.id if engine is not None else None

    def _on_model_state(self, state: ModelState) -> None:
        self.saes.on_model_state(state)  # attachments go with the model they sat on
        engine = self.host.engine
        self.events.publish(
            ModelStateChanged(
                state,
                model_id=engine.description.id if engine and state is ModelState.READY else "",
                error=(self.host.load_error or "") if state is ModelState.FAILED else "",
            )
        )
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if state is ModelState.READY
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        # The health servicer's set() is a coroutine in grpc.aio; state changes
        # happen on the event loop, so schedule it there.
        for service in ("", INFERENCE_SERVICE):
            asyncio.get_running_loop().create_task(self._health.set(service, status))

    async def start(self) -> None:
        for service in ("", INFERENCE_SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.settings.metrics_port:
            self._metrics_endpoint = MetricsEndpoint(
                self.metrics.registry,
                self.settings.metrics_host or self.settings.grpc_host,
                self.settings.metrics_port,
            )
        await self._server.start()
        log.info("gRPC listening on %s:%d", self.settings.grpc_host, self.port)
        self._load_task = asyncio.create_task(self.host.load())
        await asyncio.to_thread(self.profiles.restore_active)
        self._restore_task = asyncio.create_task(self._restore_attachment())

    async def _restore_attachment(self) -> None:
        """Once the model has loaded: the SAE attached when the service stopped comes
        back, then its live steering (its active profile comes back with the attach)."""
        if self._load_task is not None:
            await self._load_task
        restored = await self.saes.restore()
        if restored.state is not RestoreState.RESTORED or restored.steering_json is None:
            return
        try:
            steering = persisted.loads(restored.steering_json)
            self.steering_state.set_live(steering.features, steering.enabled)
        except (MillmError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "the live steering saved with SAE %s is not set again: %s", restored.sae_id, exc
            )

    async def _save_live_steering(self) -> None:
        live = self.steering_state
        await self.saes.save_steering(lambda: persisted.dumps(live.live))

    async def wait_until_ready(self) -> None:
        if self._load_task is not None:
            await self._load_task

    async def wait_until_restored(self) -> None:
        """Until the start-up restore of the last attachment is done (however it went)."""
        if self._restore_task is not None:
            await self._restore_task

    async def stop(self, grace_s: float) -> None:
        """Health turns NOT_SERVING and new calls get UNAVAILABLE / SHUTTING_DOWN at
        once; generations get up to `grace_s` to finish, then every call still
        running ends with that same status."""
        await self._health.enter_graceful_shutdown()
        await self._gate.drain(grace_s)
        # Nothing is left running; this grace only lets the last messages and statuses
        # flush (it ends as soon as they have). A stream whose client reads slowly can
        # have many tokens queued before its status: on a loaded 2-core machine 1 s
        # was sometimes too short, and the client saw a dropped connection instead.
        await self._server.stop(_FLUSH_S)
        for task in (self._restore_task, self._load_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # A run stops at a step boundary with a checkpoint, so it resumes after a restart.
        await asyncio.to_thread(self.training.shutdown)
        self.host.shutdown()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
        self.db.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def serve(settings: InferenceSettings) -> None:
    server = InferenceServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: up to %.1f s for running generations", settings.shutdown_grace_s)
    await server.stop(settings.shutdown_grace_s)
