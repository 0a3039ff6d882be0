"""gRPC adapter for millm.v1.SteeringService: the global live steering."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from inference_service.monitoring.hub import MonitorHub
from inference_service.sae.active import ActiveSae
from inference_service.servicers import steering_convert
from inference_service.steering.state import SteeringState
from millm.v1 import steering_service_pb2 as pb
from millm.v1 import steering_service_pb2_grpc as pb_grpc


class SteeringServicer(pb_grpc.SteeringServiceServicer):
    def __init__(
        self,
        state: SteeringState,
        monitor: MonitorHub,
        on_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`on_change` runs after each change of the live steering (it persists it)."""
        self._state = state
        self._monitor = monitor
        self._on_change = on_change

    async def _changed(self) -> None:
        if self._on_change is not None:
            await self._on_change()

    def _message(self) -> pb.SteeringState:
        state = self._state
        active = state.target()
        profile = state.active_profile
        effective = state.effective_for(active)
        indices = {f.index for f in effective.features} | {f.index for f in state.live.features}
        return pb.SteeringState(
            live=steering_convert.steering_set_message(state.live),
            active_profile=profile.name if profile is not None else "",
            effective=steering_convert.steering_set_message(effective),
            sae_id=active.sae_id if active is not None else "",
            d_sae=active.d_sae if active is not None else 0,
            max_activations=_max_activations(active, self._monitor, sorted(indices))
            if active is not None
            else {},
        )

    async def GetSteering(
        self, request: pb.GetSteeringRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSteeringResponse:
        return pb.GetSteeringResponse(state=self._message())

    async def SetSteering(
        self, request: pb.SetSteeringRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetSteeringResponse:
        enabled = request.enabled if request.HasField("enabled") else None
        self._state.set_live(steering_convert.features(request.features), enabled)
        await self._changed()
        return pb.SetSteeringResponse(state=self._message())

    async def ClearSteering(
        self, request: pb.ClearSteeringRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClearSteeringResponse:
        self._state.clear()
        await self._changed()
        return pb.ClearSteeringResponse(state=self._message())

    async def SetSteeringEnabled(
        self, request: pb.SetSteeringEnabledRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetSteeringEnabledResponse:
        self._state.set_enabled(request.enabled)
        await self._changed()
        return pb.SetSteeringEnabledResponse(state=self._message())


def _max_activations(
    active: ActiveSae, monitor: MonitorHub, indices: list[int]
) -> dict[int, float]:
    """Each feature's typical maximum activation: from the SAE's own statistics
    (written by training) where it has them, else the largest monitoring has seen."""
    if not indices:
        return {}
    stats, _ = monitor.statistics(indices, len(indices))
    found = {s.index: s.max for s in stats if s.count}
    stored = active.feature_max
    if stored is not None:
        found.update({i: float(stored[i]) for i in indices if 0 <= i < len(stored)})
    return found
