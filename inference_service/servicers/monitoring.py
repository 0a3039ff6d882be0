"""gRPC adapter for millm.v1.MonitoringService: live frames, history, statistics, export."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from inference_service.errors import MillmError
from inference_service.monitoring.hub import MonitorHub, MonitoringConfig, Subscription
from inference_service.monitoring.statistics import FeatureStats
from inference_service.monitoring.types import Selection, validate_selection
from inference_service.sae.active import ActiveSae
from inference_service.servicers import steering_convert
from millm.v1 import monitoring_service_pb2 as pb
from millm.v1 import monitoring_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_HISTORY_LIMIT = 100
MAX_HISTORY_LIMIT = 1000
DEFAULT_STATISTICS_LIMIT = 20


class MonitoringServicer(pb_grpc.MonitoringServiceServicer):
    """`active` reads the attached SAE (`ActiveSaeSlot.get`), whose width bounds selections."""

    def __init__(self, hub: MonitorHub, active: Callable[[], ActiveSae | None]) -> None:
        self._hub = hub
        self._active = active

    def _d_sae(self) -> int | None:
        active = self._active()
        return active.d_sae if active is not None else None

    async def Monitor(
        self, request_iterator: AsyncIterator[pb.MonitorRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.MonitorResponse]:
        """The first message sets the selection; a later one with no features and
        top_k 0 only pauses or resumes, keeping the selection."""
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        selection = validate_selection(selection_of(first), self._d_sae())
        subscription = self._hub.subscribe(selection, paused=first.paused)
        # Later client messages are read beside the frame stream.
        reader = asyncio.create_task(self._follow(request_iterator, subscription))
        try:
            async for frame, dropped in subscription:
                yield pb.MonitorResponse(
                    frame=steering_convert.frame(frame), dropped_frames=dropped
                )
        finally:
            # Runs on every way out, the client cancelling the call included.
            subscription.close()
            reader.cancel()

    async def _follow(
        self, requests: AsyncIterator[pb.MonitorRequest], subscription: Subscription
    ) -> None:
        try:
            async for message in requests:
                selection = selection_of(message)
                if selection.empty:
                    subscription.update(None, message.paused)
                else:
                    subscription.update(
                        validate_selection(selection, self._d_sae()), message.paused
                    )
        except MillmError as exc:
            subscription.close(exc)  # ends the stream with this status
        except Exception:
            # The client went away; the stream's own cancellation cleans up.
            log.debug("monitor request stream ended", exc_info=True)

    async def GetMonitoringConfig(
        self, request: pb.GetMonitoringConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMonitoringConfigResponse:
        return pb.GetMonitoringConfigResponse(
            config=config_message(self._hub.config), subscribers=self._hub.subscriber_count
        )

    async def SetMonitoringConfig(
        self, request: pb.SetMonitoringConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetMonitoringConfigResponse:
        config = config_of(request.config, current=self._hub.config)
        applied = self._hub.set_config(config, d_sae=self._d_sae())
        return pb.SetMonitoringConfigResponse(config=config_message(applied))

    async def GetMonitoringHistory(
        self, request: pb.GetMonitoringHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMonitoringHistoryResponse:
        limit = min(request.limit or DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)
        frames = self._hub.history(limit, request.request_id)
        messages = await asyncio.to_thread(lambda: [steering_convert.frame(f) for f in frames])
        return pb.GetMonitoringHistoryResponse(frames=messages)

    async def GetFeatureStatistics(
        self, request: pb.GetFeatureStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetFeatureStatisticsResponse:
        features = list(dict.fromkeys(request.features))
        stats, tokens = await asyncio.to_thread(
            self._hub.statistics, features, request.limit or DEFAULT_STATISTICS_LIMIT
        )
        return pb.GetFeatureStatisticsResponse(
            features=[statistics_message(s) for s in stats], tokens=tokens
        )

    async def ExportMonitoringHistory(
        self, request: pb.ExportMonitoringHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportMonitoringHistoryResponse:
        format = request.format.strip().lower() or "json"
        data, content_type = await asyncio.to_thread(self._hub.export, format)
        return pb.ExportMonitoringHistoryResponse(data=data, content_type=content_type)

    async def ClearMonitoringHistory(
        self, request: pb.ClearMonitoringHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClearMonitoringHistoryResponse:
        self._hub.clear()
        return pb.ClearMonitoringHistoryResponse()


# Translation between millm.v1 messages and monitoring values.


def selection_of(message: pb.MonitorRequest) -> Selection:
    return Selection(tuple(dict.fromkeys(message.features)), message.top_k)


def config_of(message: pb.MonitoringConfig, *, current: MonitoringConfig) -> MonitoringConfig:
    return MonitoringConfig(
        record_history=message.record_history,
        top_k=message.top_k,
        features=tuple(message.features),
        history_frames=message.history_frames or current.history_frames,
    )


def config_message(config: MonitoringConfig) -> pb.MonitoringConfig:
    return pb.MonitoringConfig(
        record_history=config.record_history,
        top_k=config.top_k,
        features=config.features,
        history_frames=config.history_frames,
    )


def statistics_message(stats: FeatureStats) -> pb.FeatureStatistics:
    return pb.FeatureStatistics(
        index=stats.index,
        count=stats.count,
        min=stats.min,
        max=stats.max,
        mean=stats.mean,
        fraction_active=stats.fraction_active,
    )
