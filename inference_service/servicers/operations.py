"""gRPC adapter for millm.v1.OperationsService."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from inference_service.operations.manager import OperationsManager
from inference_service.servicers import operations_convert
from inference_service.servicers.paging import next_page_token, page_bounds
from millm.v1 import operations_service_pb2 as pb
from millm.v1 import operations_service_pb2_grpc as pb_grpc


class OperationsServicer(pb_grpc.OperationsServiceServicer):
    def __init__(self, operations: OperationsManager) -> None:
        self._operations = operations

    async def GetOperation(
        self, request: pb.GetOperationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOperationResponse:
        return pb.GetOperationResponse(
            operation=operations_convert.operation(self._operations.get(request.id))
        )

    async def ListOperations(
        self, request: pb.ListOperationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListOperationsResponse:
        limit, offset = page_bounds(request.page_size, request.page_token)
        items = self._operations.list(
            limit=limit + 1, offset=offset, unfinished_only=request.unfinished_only
        )
        return pb.ListOperationsResponse(
            operations=[operations_convert.operation(s) for s in items[:limit]],
            next_page_token=next_page_token(offset, limit, len(items)),
        )

    async def WatchOperation(
        self, request: pb.WatchOperationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchOperationResponse]:
        async for snapshot in self._operations.watch(request.id):
            yield pb.WatchOperationResponse(operation=operations_convert.operation(snapshot))

    async def CancelOperation(
        self, request: pb.CancelOperationRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelOperationResponse:
        return pb.CancelOperationResponse(
            operation=operations_convert.operation(self._operations.cancel(request.id))
        )
