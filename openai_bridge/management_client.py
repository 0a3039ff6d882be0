"""The bridge's door to ModelService, OperationsService and SaeService: an abstract
client and its gRPC form.

The /api/v1 routes depend on `ManagementClient`, so they are tested against an
in-memory fake. `GrpcManagementClient` rides on the `GrpcInferenceClient`'s
channel (one connection to the service), and raises the same `InferenceError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import grpc

from millm.v1 import model_service_pb2 as mpb
from millm.v1 import model_service_pb2_grpc as mpb_grpc
from millm.v1 import operation_pb2 as opb
from millm.v1 import operations_service_pb2 as ospb
from millm.v1 import operations_service_pb2_grpc as ospb_grpc
from millm.v1 import sae_service_pb2 as spb
from millm.v1 import sae_service_pb2_grpc as spb_grpc
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

SAE_NOT_OFFERED = "This management client does not offer the SAE calls."


def _sae_not_offered() -> InferenceError:
    return InferenceError(grpc.StatusCode.UNIMPLEMENTED, None, SAE_NOT_OFFERED)


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

    # SaeService. Not abstract: a client written before SAEs (such as a test
    # fake) keeps working and answers these with 501, like a servicer base class.

    async def preview_sae_repo(
        self, request: spb.PreviewSaeRepoRequest
    ) -> spb.PreviewSaeRepoResponse:
        raise _sae_not_offered()

    async def list_sae_releases(
        self, request: spb.ListSaeReleasesRequest
    ) -> spb.ListSaeReleasesResponse:
        raise _sae_not_offered()

    async def download_sae(self, request: spb.DownloadSaeRequest) -> spb.DownloadSaeResponse:
        raise _sae_not_offered()

    async def import_sae(self, request: spb.ImportSaeRequest) -> spb.ImportSaeResponse:
        raise _sae_not_offered()

    async def list_saes(self, request: spb.ListSaesRequest) -> spb.ListSaesResponse:
        raise _sae_not_offered()

    async def get_sae(self, request: spb.GetSaeRequest) -> spb.GetSaeResponse:
        raise _sae_not_offered()

    async def delete_sae(self, request: spb.DeleteSaeRequest) -> spb.DeleteSaeResponse:
        raise _sae_not_offered()

    async def get_sae_cache_usage(
        self, request: spb.GetSaeCacheUsageRequest
    ) -> spb.GetSaeCacheUsageResponse:
        raise _sae_not_offered()

    async def check_sae_compatibility(
        self, request: spb.CheckSaeCompatibilityRequest
    ) -> spb.CheckSaeCompatibilityResponse:
        raise _sae_not_offered()

    async def attach_sae(self, request: spb.AttachSaeRequest) -> spb.AttachSaeResponse:
        raise _sae_not_offered()

    async def detach_sae(self, request: spb.DetachSaeRequest) -> spb.DetachSaeResponse:
        raise _sae_not_offered()

    async def list_sae_attachments(
        self, request: spb.ListSaeAttachmentsRequest
    ) -> spb.ListSaeAttachmentsResponse:
        raise _sae_not_offered()

    def export_sae(self, request: spb.ExportSaeRequest) -> AsyncIterator[spb.ExportSaeResponse]:
        """Yields the archive's chunks, the file name on the first; raises `InferenceError`.

        Closing the iterator early (`aclose`) cancels the export.
        """
        raise _sae_not_offered()

    async def upload_sae(self, request: spb.UploadSaeRequest) -> spb.UploadSaeResponse:
        raise _sae_not_offered()


class _Stubs(NamedTuple):
    models: mpb_grpc.ModelServiceStub
    operations: ospb_grpc.OperationsServiceStub
    saes: spb_grpc.SaeServiceStub


class GrpcManagementClient(ManagementClient):
    """`ManagementClient` over the channel of a `GrpcInferenceClient`."""

    def __init__(self, inference: GrpcInferenceClient) -> None:
        self._inference = inference
        self._channel: grpc.aio.Channel | None = None
        self._stub_set: _Stubs | None = None

    def _stubs(self) -> _Stubs:
        channel = self._inference.channel()
        if self._stub_set is None or channel is not self._channel:
            self._channel = channel
            self._stub_set = _Stubs(
                models=mpb_grpc.ModelServiceStub(channel),
                operations=ospb_grpc.OperationsServiceStub(channel),
                saes=spb_grpc.SaeServiceStub(channel),
            )
        return self._stub_set

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
        stub = self._stubs().models
        return await self._unary(stub.ListModels, request, timeout_s=self._inference.timeout_s)

    async def get_model(self, request: mpb.GetModelRequest) -> mpb.GetModelResponse:
        stub = self._stubs().models
        return await self._unary(stub.GetModel, request, timeout_s=self._inference.timeout_s)

    async def download_model(self, request: mpb.DownloadModelRequest) -> mpb.DownloadModelResponse:
        stub = self._stubs().models
        return await self._unary(stub.DownloadModel, request, timeout_s=self._inference.timeout_s)

    async def estimate_model_memory(
        self, request: mpb.EstimateModelMemoryRequest
    ) -> mpb.EstimateModelMemoryResponse:
        stub = self._stubs().models
        return await self._unary(
            stub.EstimateModelMemory, request, timeout_s=self._inference.timeout_s
        )

    async def load_model(self, request: mpb.LoadModelRequest) -> mpb.LoadModelResponse:
        # No deadline: loading a large model from disk can take minutes.
        return await self._unary(self._stubs().models.LoadModel, request, timeout_s=None)

    async def unload_model(self, request: mpb.UnloadModelRequest) -> mpb.UnloadModelResponse:
        # No deadline: unloading waits for running generations to finish.
        return await self._unary(self._stubs().models.UnloadModel, request, timeout_s=None)

    async def delete_model(self, request: mpb.DeleteModelRequest) -> mpb.DeleteModelResponse:
        stub = self._stubs().models
        return await self._unary(stub.DeleteModel, request, timeout_s=self._inference.timeout_s)

    async def list_operations(
        self, request: ospb.ListOperationsRequest
    ) -> ospb.ListOperationsResponse:
        stub = self._stubs().operations
        return await self._unary(stub.ListOperations, request, timeout_s=self._inference.timeout_s)

    async def get_operation(self, request: ospb.GetOperationRequest) -> ospb.GetOperationResponse:
        stub = self._stubs().operations
        return await self._unary(stub.GetOperation, request, timeout_s=self._inference.timeout_s)

    async def cancel_operation(
        self, request: ospb.CancelOperationRequest
    ) -> ospb.CancelOperationResponse:
        stub = self._stubs().operations
        return await self._unary(stub.CancelOperation, request, timeout_s=self._inference.timeout_s)

    async def watch_operation(self, operation_id: str) -> AsyncIterator[opb.Operation]:
        # No deadline: a download lasts as long as it lasts; the caller cancels by closing.
        call = self._stubs().operations.WatchOperation(
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

    async def preview_sae_repo(
        self, request: spb.PreviewSaeRepoRequest
    ) -> spb.PreviewSaeRepoResponse:
        # No deadline: it reads every SAE config of the repository from the Hub.
        return await self._unary(self._stubs().saes.PreviewSaeRepo, request, timeout_s=None)

    async def list_sae_releases(
        self, request: spb.ListSaeReleasesRequest
    ) -> spb.ListSaeReleasesResponse:
        stub = self._stubs().saes
        return await self._unary(stub.ListSaeReleases, request, timeout_s=self._inference.timeout_s)

    async def download_sae(self, request: spb.DownloadSaeRequest) -> spb.DownloadSaeResponse:
        stub = self._stubs().saes
        return await self._unary(stub.DownloadSae, request, timeout_s=self._inference.timeout_s)

    async def import_sae(self, request: spb.ImportSaeRequest) -> spb.ImportSaeResponse:
        # No deadline: it copies and hashes weights that may be gigabytes.
        return await self._unary(self._stubs().saes.ImportSae, request, timeout_s=None)

    async def list_saes(self, request: spb.ListSaesRequest) -> spb.ListSaesResponse:
        stub = self._stubs().saes
        return await self._unary(stub.ListSaes, request, timeout_s=self._inference.timeout_s)

    async def get_sae(self, request: spb.GetSaeRequest) -> spb.GetSaeResponse:
        stub = self._stubs().saes
        return await self._unary(stub.GetSae, request, timeout_s=self._inference.timeout_s)

    async def delete_sae(self, request: spb.DeleteSaeRequest) -> spb.DeleteSaeResponse:
        stub = self._stubs().saes
        return await self._unary(stub.DeleteSae, request, timeout_s=self._inference.timeout_s)

    async def get_sae_cache_usage(
        self, request: spb.GetSaeCacheUsageRequest
    ) -> spb.GetSaeCacheUsageResponse:
        stub = self._stubs().saes
        return await self._unary(
            stub.GetSaeCacheUsage, request, timeout_s=self._inference.timeout_s
        )

    async def check_sae_compatibility(
        self, request: spb.CheckSaeCompatibilityRequest
    ) -> spb.CheckSaeCompatibilityResponse:
        stub = self._stubs().saes
        return await self._unary(
            stub.CheckSaeCompatibility, request, timeout_s=self._inference.timeout_s
        )

    async def attach_sae(self, request: spb.AttachSaeRequest) -> spb.AttachSaeResponse:
        # No deadline: it waits for other SAE changes and loads the weights onto the device.
        return await self._unary(self._stubs().saes.AttachSae, request, timeout_s=None)

    async def detach_sae(self, request: spb.DetachSaeRequest) -> spb.DetachSaeResponse:
        # No deadline: it waits for other SAE changes to finish first.
        return await self._unary(self._stubs().saes.DetachSae, request, timeout_s=None)

    async def list_sae_attachments(
        self, request: spb.ListSaeAttachmentsRequest
    ) -> spb.ListSaeAttachmentsResponse:
        stub = self._stubs().saes
        return await self._unary(
            stub.ListSaeAttachments, request, timeout_s=self._inference.timeout_s
        )

    async def export_sae(
        self, request: spb.ExportSaeRequest
    ) -> AsyncIterator[spb.ExportSaeResponse]:
        # No deadline: a large SAE takes a while to archive and to send; the caller
        # cancels by closing.
        call = self._stubs().saes.ExportSae(request, metadata=self._inference.call_metadata())
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                yield message
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self._inference.address) from None
        finally:
            call.cancel()

    async def upload_sae(self, request: spb.UploadSaeRequest) -> spb.UploadSaeResponse:
        stub = self._stubs().saes
        return await self._unary(stub.UploadSae, request, timeout_s=self._inference.timeout_s)
