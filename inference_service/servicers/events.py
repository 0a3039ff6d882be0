"""gRPC adapter for millm.v1.EventService: the events of state changes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from inference_service.events import EventBus
from inference_service.servicers import events_convert
from millm.v1 import event_service_pb2 as pb
from millm.v1 import event_service_pb2_grpc as pb_grpc


class EventServicer(pb_grpc.EventServiceServicer):
    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        subscription = self._bus.subscribe(request.after_sequence)
        try:
            async for event in subscription:
                yield pb.WatchEventsResponse(event=events_convert.event_message(event))
        finally:
            subscription.close()
