"""gRPC adapter for millm.v1.SteeringService: the global live steering."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from inference_service.servicers import steering_convert
from inference_service.steering.state import SteeringState
from millm.v1 import steering_service_pb2 as pb
from millm.v1 import steering_service_pb2_grpc as pb_grpc

# Feature index -> the largest activation seen for it, where known.
MaxActivations = Callable[[list[int]], dict[int, float]]


class SteeringServicer(pb_grpc.SteeringServiceServicer):
    def __init__(self, state: SteeringState, max_activations: MaxActivations) -> None:
        self._state = state
        self._max_activations = max_activations

    def _message(self) -> pb.SteeringState:
        state = self._state
        target = state.target()
        profile = state.active_profile
        indices = [f.index for f in state.effective().features] + [
            f.index for f in state.live.features
        ]
        return pb.SteeringState(
            live=steering_convert.steering_set_message(state.live),
            active_profile=profile.name if profile is not None else "",
            effective=steering_convert.steering_set_message(state.effective()),
            sae_id=target.sae_id if target is not None else "",
            d_sae=target.d_sae if target is not None else 0,
            max_activations=self._max_activations(sorted(set(indices))) if target else {},
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
        return pb.SetSteeringResponse(state=self._message())

    async def ClearSteering(
        self, request: pb.ClearSteeringRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClearSteeringResponse:
        self._state.clear()
        return pb.ClearSteeringResponse(state=self._message())

    async def SetSteeringEnabled(
        self, request: pb.SetSteeringEnabledRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetSteeringEnabledResponse:
        self._state.set_enabled(request.enabled)
        return pb.SetSteeringEnabledResponse(state=self._message())
