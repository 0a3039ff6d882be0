"""The bridge's door to ModelService and OperationsService: an abstract client and its gRPC form.

The /api/v1 routes depend on `ManagementClient`, so they are tested against an
in-memory fake. `GrpcManagementClient` rides on the `GrpcInferenceClient`'s
channel (one connection to the service), and raises the same `InferenceError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from millm.v1 import model_service_pb2 as mpb
from millm.v1 import model_service_pb2_grpc as mpb_grpc
from millm.v1 import operation_pb2 as opb
from millm.v1 import operations_service_pb2 as ospb
from millm.v1 import operations_service_pb2_grpc as ospb_grpc
from openai_bridge.errors import InferenceError
from openai_bridge.inference_client import GrpcInferenceClient, decode_rpc_error

FINAL_STATES = frozenset(
    {
        opb.OPERATION_STATE_SUCCEEDED,
        opb.OPERATION_STATE_FAILED,
        opb.OPERATION_STATE_CANCELLED,
    }
)

Response = TypeVar("Response")


class ManagementClient(ABC):
    """What the /api/v1 routes need: one method per RPC, protobuf in and out."""

    @abstractmethod
    async def list_models(self, request: mpb.ListModelsRequest) -> mpb.ListModelsResponse: ...

    @abstractmethod
    async def get_model(self, request: mpb.GetModelRequest) -> mpb.GetModelResponse: ...

    @abstractmethod
    async def download_model(
        self, request: mpb.DownloadModelRequest
    ) -> mpb.DownloadModelResponse: ...

    @abstractmethod
    async def estimate_model_memory(
        self, request: mpb.EstimateModelMemoryRequest
    ) -> mpb.EstimateModelMemoryResponse: ...

    @abstractmethod
    async def load_model(self, request: mpb.LoadModelRequest) -> mpb.LoadModelResponse: ...

    @abstractmethod
    async def unload_model(self, request: mpb.UnloadModelRequest) -> mpb.UnloadModelResponse: ...

    @abstractmethod
    async def delete_model(self, request: mpb.DeleteModelRequest) -> mpb.DeleteModelResponse: ...

    @abstractmethod
    async def list_operations(
        self, request: ospb.ListOperationsRequest
    ) -> ospb.ListOperationsResponse: ...

    @abstractmethod
    async def get_operation(
        self, request: ospb.GetOperationRequest
    ) -> ospb.GetOperationResponse: ...

    @abstractmethod
    async def cancel_operation(
        self, request: ospb.CancelOperationRequest
    ) -> ospb.CancelOperationResponse: ...

    @abstractmethod
    def watch_operation(self, operation_id: str) -> AsyncIterator[opb.Operation]:
        """Yields snapshots, the last one in a final state; raises `InferenceError`.

        Closing the iterator early (`aclose`) cancels the watch.
        """


class GrpcManagementClient(ManagementClient):
    """`ManagementClient` over the channel of a `GrpcInferenceClient`."""

    def __init__(self, inference: GrpcInferenceClient) -> None:
        self._inference = inference
        self._channel: grpc.aio.Channel | None = None
        self._models: mpb_grpc.ModelServiceStub | None = None
        self._operations: ospb_grpc.OperationsServiceStub | None = None

    def _stubs(self) -> tuple[mpb_grpc.ModelServiceStub, ospb_grpc.OperationsServiceStub]:
        channel = self._inference.channel()
        if self._models is None or self._operations is None or channel is not self._channel:
            self._channel = channel
            self._models = mpb_grpc.ModelServiceStub(channel)
            self._operations = ospb_grpc.OperationsServiceStub(channel)
        return self._models, self._operations

    async def _unary(
        self,
        method: Callable[..., Awaitable[Response]],
        request: Any,
        *,
        timeout_s: float | None,
    ) -> Response:
        try:
            return await method(
                request, metadata=self._inference.call_metadata(), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self._inference.address) from None

    async def list_models(self, request: mpb.ListModelsRequest) -> mpb.ListModelsResponse:
        stub = self._stubs()[0]
        return await self._unary(stub.ListModels, request, timeout_s=self._inference.timeout_s)

    async def get_model(self, request: mpb.GetModelRequest) -> mpb.GetModelResponse:
        stub = self._stubs()[0]
        return await self._unary(stub.GetModel, request, timeout_s=self._inference.timeout_s)

    async def download_model(self, request: mpb.DownloadModelRequest) -> mpb.DownloadModelResponse:
        stub = self._stubs()[0]
        return await self._unary(stub.DownloadModel, request, timeout_s=self._inference.timeout_s)

    async def estimate_model_memory(
        self, request: mpb.EstimateModelMemoryRequest
    ) -> mpb.EstimateModelMemoryResponse:
        stub = self._stubs()[0]
        return await self._unary(
            stub.EstimateModelMemory, request, timeout_s=self._inference.timeout_s
        )

    async def load_model(self, request: mpb.LoadModelRequest) -> mpb.LoadModelResponse:
        # No deadline: loading a large model from disk can take minutes.
        return await self._unary(self._stubs()[0].LoadModel, request, timeout_s=None)

    async def unload_model(self, request: mpb.UnloadModelRequest) -> mpb.UnloadModelResponse:
        # No deadline: unloading waits for running generations to finish.
        return await self._unary(self._stubs()[0].UnloadModel, request, timeout_s=None)

    async def delete_model(self, request: mpb.DeleteModelRequest) -> mpb.DeleteModelResponse:
        stub = self._stubs()[0]
        return await self._unary(stub.DeleteModel, request, timeout_s=self._inference.timeout_s)

    async def list_operations(
        self, request: ospb.ListOperationsRequest
    ) -> ospb.ListOperationsResponse:
        stub = self._stubs()[1]
        return await self._unary(stub.ListOperations, request, timeout_s=self._inference.timeout_s)

    async def get_operation(self, request: ospb.GetOperationRequest) -> ospb.GetOperationResponse:
        stub = self._stubs()[1]
        return await self._unary(stub.GetOperation, request, timeout_s=self._inference.timeout_s)

    async def cancel_operation(
        self, request: ospb.CancelOperationRequest
    ) -> ospb.CancelOperationResponse:
        stub = self._stubs()[1]
        return await self._unary(stub.CancelOperation, request, timeout_s=self._inference.timeout_s)

    async def watch_operation(self, operation_id: str) -> AsyncIterator[opb.Operation]:
        # No deadline: a download lasts as long as it lasts; the caller cancels by closing.
        call = self._stubs()[1].WatchOperation(
            ospb.WatchOperationRequest(id=operation_id), metadata=self._inference.call_metadata()
        )
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    raise InferenceError(
                        grpc.StatusCode.INTERNAL,
                        "INTERNAL",
                        "The inference service ended the watch before the operation finished.",
                    )
                yield message.operation
                if message.operation.state in FINAL_STATES:
                    return
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self._inference.address) from None
        finally:
            call.cancel()
