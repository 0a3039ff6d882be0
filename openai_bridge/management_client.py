"""The bridge's door to ModelService, OperationsService, SaeService, SteeringService,
ProfileService, MonitoringService and TrainingService: an abstract client and its gRPC form.

The /api/v1 routes depend on `ManagementClient`, so they are tested against an
in-memory fake. `GrpcManagementClient` rides on the `GrpcInferenceClient`'s
channel (one connection to the service), and raises the same `InferenceError`.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import grpc

from millm.v1 import model_service_pb2 as mpb
from millm.v1 import model_service_pb2_grpc as mpb_grpc
from millm.v1 import monitoring_service_pb2 as monpb
from millm.v1 import monitoring_service_pb2_grpc as monpb_grpc
from millm.v1 import operation_pb2 as opb
from millm.v1 import operations_service_pb2 as ospb
from millm.v1 import operations_service_pb2_grpc as ospb_grpc
from millm.v1 import profile_service_pb2 as ppb
from millm.v1 import profile_service_pb2_grpc as ppb_grpc
from millm.v1 import sae_service_pb2 as spb
from millm.v1 import sae_service_pb2_grpc as spb_grpc
from millm.v1 import steering_service_pb2 as stpb
from millm.v1 import steering_service_pb2_grpc as stpb_grpc
from millm.v1 import training_pb2 as tpb
from millm.v1 import training_service_pb2 as tspb
from millm.v1 import training_service_pb2_grpc as tspb_grpc
from openai_bridge.errors import InferenceError
from openai_bridge.inference_client import GrpcInferenceClient, decode_rpc_error

FINAL_STATES = frozenset(
    {
        opb.OPERATION_STATE_SUCCEEDED,
        opb.OPERATION_STATE_FAILED,
        opb.OPERATION_STATE_CANCELLED,
    }
)

# A run in one of these states trains no more; its watch ends after it.
TRAINING_FINAL_STATES = frozenset(
    {
        tpb.TRAINING_STATE_STOPPED,
        tpb.TRAINING_STATE_COMPLETED,
        tpb.TRAINING_STATE_FAILED,
        tpb.TRAINING_STATE_INTERRUPTED,
    }
)

Response = TypeVar("Response")

SAE_NOT_OFFERED = "This management client does not offer the SAE calls."
STEERING_NOT_OFFERED = "This management client does not offer the steering calls."
PROFILES_NOT_OFFERED = "This management client does not offer the profile calls."
MONITORING_NOT_OFFERED = "This management client does not offer the monitoring calls."
TRAINING_NOT_OFFERED = "This management client does not offer the training calls."


def _not_offered(message: str) -> InferenceError:
    return InferenceError(grpc.StatusCode.UNIMPLEMENTED, None, message)


def _sae_not_offered() -> InferenceError:
    return _not_offered(SAE_NOT_OFFERED)


class MonitorStream(ABC):
    """One live `Monitor` call: send selection changes while iterating over frames."""

    @abstractmethod
    async def send(self, request: monpb.MonitorRequest) -> None:
        """Changes the selection or pauses; raises `InferenceError` if the call has failed."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[monpb.MonitorResponse]:
        """Yields frames until the service ends the call; raises `InferenceError`."""

    @abstractmethod
    def cancel(self) -> None:
        """Ends the call. Synchronous, so it is safe in a cancelled `finally`."""


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

    # SteeringService, ProfileService, MonitoringService: not abstract either.

    async def get_steering(self, request: stpb.GetSteeringRequest) -> stpb.GetSteeringResponse:
        raise _not_offered(STEERING_NOT_OFFERED)

    async def set_steering(self, request: stpb.SetSteeringRequest) -> stpb.SetSteeringResponse:
        raise _not_offered(STEERING_NOT_OFFERED)

    async def clear_steering(
        self, request: stpb.ClearSteeringRequest
    ) -> stpb.ClearSteeringResponse:
        raise _not_offered(STEERING_NOT_OFFERED)

    async def set_steering_enabled(
        self, request: stpb.SetSteeringEnabledRequest
    ) -> stpb.SetSteeringEnabledResponse:
        raise _not_offered(STEERING_NOT_OFFERED)

    async def list_profiles(self, request: ppb.ListProfilesRequest) -> ppb.ListProfilesResponse:
        raise _not_offered(PROFILES_NOT_OFFERED)

    async def get_profile(self, request: ppb.GetProfileRequest) -> ppb.GetProfileResponse:
        raise _not_offered(PROFILES_NOT_OFFERED)

    async def create_profile(self, request: ppb.CreateProfileRequest) -> ppb.CreateProfileResponse:
        raise _not_offered(PROFILES_NOT_OFFERED)

    async def update_profile(self, request: ppb.UpdateProfileRequest) -> ppb.UpdateProfileResponse:
        raise _not_offered(PROFILES_NOT_OFFERED)

    async def delete_profile(self, request: ppb.DeleteProfileRequest) -> ppb.DeleteProfileResponse:
        raise _not_offered(PROFILES_NOT_OFFERED)

    async def activate_profile(
        self, request: ppb.ActivateProfileRequest
    ) -> ppb.ActivateProfileResponse:
        raise _not_offered(PROFILES_NOT_OFFERED)

    async def deactivate_profile(
        self, request: ppb.DeactivateProfileRequest
    ) -> ppb.DeactivateProfileResponse:
        raise _not_offered(PROFILES_NOT_OFFERED)

    async def export_profile(self, request: ppb.ExportProfileRequest) -> ppb.ExportProfileResponse:
        raise _not_offered(PROFILES_NOT_OFFERED)

    async def import_profile(self, request: ppb.ImportProfileRequest) -> ppb.ImportProfileResponse:
        raise _not_offered(PROFILES_NOT_OFFERED)

    async def monitor(self, first: monpb.MonitorRequest) -> MonitorStream:
        """Opens a `Monitor` call with the initial selection `first`."""
        raise _not_offered(MONITORING_NOT_OFFERED)

    async def get_monitoring_config(
        self, request: monpb.GetMonitoringConfigRequest
    ) -> monpb.GetMonitoringConfigResponse:
        raise _not_offered(MONITORING_NOT_OFFERED)

    async def set_monitoring_config(
        self, request: monpb.SetMonitoringConfigRequest
    ) -> monpb.SetMonitoringConfigResponse:
        raise _not_offered(MONITORING_NOT_OFFERED)

    async def get_monitoring_history(
        self, request: monpb.GetMonitoringHistoryRequest
    ) -> monpb.GetMonitoringHistoryResponse:
        raise _not_offered(MONITORING_NOT_OFFERED)

    async def get_feature_statistics(
        self, request: monpb.GetFeatureStatisticsRequest
    ) -> monpb.GetFeatureStatisticsResponse:
        raise _not_offered(MONITORING_NOT_OFFERED)

    async def export_monitoring_history(
        self, request: monpb.ExportMonitoringHistoryRequest
    ) -> monpb.ExportMonitoringHistoryResponse:
        raise _not_offered(MONITORING_NOT_OFFERED)

    async def clear_monitoring_history(
        self, request: monpb.ClearMonitoringHistoryRequest
    ) -> monpb.ClearMonitoringHistoryResponse:
        raise _not_offered(MONITORING_NOT_OFFERED)

    # TrainingService: not abstract either.

    async def start_training(
        self, request: tspb.StartTrainingRequest
    ) -> tspb.StartTrainingResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def get_training_run(
        self, request: tspb.GetTrainingRunRequest
    ) -> tspb.GetTrainingRunResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def list_training_runs(
        self, request: tspb.ListTrainingRunsRequest
    ) -> tspb.ListTrainingRunsResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def stop_training(self, request: tspb.StopTrainingRequest) -> tspb.StopTrainingResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def resume_training(
        self, request: tspb.ResumeTrainingRequest
    ) -> tspb.ResumeTrainingResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def delete_training_run(
        self, request: tspb.DeleteTrainingRunRequest
    ) -> tspb.DeleteTrainingRunResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def list_training_metrics(
        self, request: tspb.ListTrainingMetricsRequest
    ) -> tspb.ListTrainingMetricsResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    def watch_training_run(self, run_id: str) -> AsyncIterator[tspb.WatchTrainingRunResponse]:
        """Yields the run and its new metrics until the run finishes; raises `InferenceError`.

        Closing the iterator early (`aclose`) cancels the watch.
        """
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def upload_corpus(
        self, requests: AsyncIterable[tspb.UploadCorpusRequest]
    ) -> tspb.UploadCorpusResponse:
        """Sends `requests` (the name, then the data) as they come; raises `InferenceError`.

        An error raised by `requests` itself cancels the upload and propagates.
        """
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def list_corpora(self, request: tspb.ListCorporaRequest) -> tspb.ListCorporaResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def delete_corpus(self, request: tspb.DeleteCorpusRequest) -> tspb.DeleteCorpusResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def create_training_template(
        self, request: tspb.CreateTrainingTemplateRequest
    ) -> tspb.CreateTrainingTemplateResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def get_training_template(
        self, request: tspb.GetTrainingTemplateRequest
    ) -> tspb.GetTrainingTemplateResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def list_training_templates(
        self, request: tspb.ListTrainingTemplatesRequest
    ) -> tspb.ListTrainingTemplatesResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def update_training_template(
        self, request: tspb.UpdateTrainingTemplateRequest
    ) -> tspb.UpdateTrainingTemplateResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def delete_training_template(
        self, request: tspb.DeleteTrainingTemplateRequest
    ) -> tspb.DeleteTrainingTemplateResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def duplicate_training_template(
        self, request: tspb.DuplicateTrainingTemplateRequest
    ) -> tspb.DuplicateTrainingTemplateResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def export_training_template(
        self, request: tspb.ExportTrainingTemplateRequest
    ) -> tspb.ExportTrainingTemplateResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)

    async def import_training_template(
        self, request: tspb.ImportTrainingTemplateRequest
    ) -> tspb.ImportTrainingTemplateResponse:
        raise _not_offered(TRAINING_NOT_OFFERED)


class _Stubs(NamedTuple):
    models: mpb_grpc.ModelServiceStub
    operations: ospb_grpc.OperationsServiceStub
    saes: spb_grpc.SaeServiceStub
    steering: stpb_grpc.SteeringServiceStub
    profiles: ppb_grpc.ProfileServiceStub
    monitoring: monpb_grpc.MonitoringServiceStub
    training: tspb_grpc.TrainingServiceStub


class _GrpcMonitorStream(MonitorStream):
    def __init__(self, call: grpc.aio.StreamStreamCall, address: str) -> None:
        self._call = call
        self._address = address

    async def send(self, request: monpb.MonitorRequest) -> None:
        try:
            await self._call.write(request)
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self._address) from None
        except asyncio.InvalidStateError:
            # The call already ended; reading it reports why.
            return

    async def __aiter__(self) -> AsyncIterator[monpb.MonitorResponse]:
        try:
            while True:
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    return
                yield message
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self._address) from None

    def cancel(self) -> None:
        self._call.cancel()


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
                steering=stpb_grpc.SteeringServiceStub(channel),
                profiles=ppb_grpc.ProfileServiceStub(channel),
                monitoring=monpb_grpc.MonitoringServiceStub(channel),
                training=tspb_grpc.TrainingServiceStub(channel),
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

    # ---------------------------------------------------------------- steering

    async def get_steering(self, request: stpb.GetSteeringRequest) -> stpb.GetSteeringResponse:
        stub = self._stubs().steering
        return await self._unary(stub.GetSteering, request, timeout_s=self._inference.timeout_s)

    async def set_steering(self, request: stpb.SetSteeringRequest) -> stpb.SetSteeringResponse:
        stub = self._stubs().steering
        return await self._unary(stub.SetSteering, request, timeout_s=self._inference.timeout_s)

    async def clear_steering(
        self, request: stpb.ClearSteeringRequest
    ) -> stpb.ClearSteeringResponse:
        stub = self._stubs().steering
        return await self._unary(stub.ClearSteering, request, timeout_s=self._inference.timeout_s)

    async def set_steering_enabled(
        self, request: stpb.SetSteeringEnabledRequest
    ) -> stpb.SetSteeringEnabledResponse:
        stub = self._stubs().steering
        return await self._unary(
            stub.SetSteeringEnabled, request, timeout_s=self._inference.timeout_s
        )

    # ---------------------------------------------------------------- profiles

    async def list_profiles(self, request: ppb.ListProfilesRequest) -> ppb.ListProfilesResponse:
        stub = self._stubs().profiles
        return await self._unary(stub.ListProfiles, request, timeout_s=self._inference.timeout_s)

    async def get_profile(self, request: ppb.GetProfileRequest) -> ppb.GetProfileResponse:
        stub = self._stubs().profiles
        return await self._unary(stub.GetProfile, request, timeout_s=self._inference.timeout_s)

    async def create_profile(self, request: ppb.CreateProfileRequest) -> ppb.CreateProfileResponse:
        stub = self._stubs().profiles
        return await self._unary(stub.CreateProfile, request, timeout_s=self._inference.timeout_s)

    async def update_profile(self, request: ppb.UpdateProfileRequest) -> ppb.UpdateProfileResponse:
        stub = self._stubs().profiles
        return await self._unary(stub.UpdateProfile, request, timeout_s=self._inference.timeout_s)

    async def delete_profile(self, request: ppb.DeleteProfileRequest) -> ppb.DeleteProfileResponse:
        stub = self._stubs().profiles
        return await self._unary(stub.DeleteProfile, request, timeout_s=self._inference.timeout_s)

    async def activate_profile(
        self, request: ppb.ActivateProfileRequest
    ) -> ppb.ActivateProfileResponse:
        stub = self._stubs().profiles
        return await self._unary(stub.ActivateProfile, request, timeout_s=self._inference.timeout_s)

    async def deactivate_profile(
        self, request: ppb.DeactivateProfileRequest
    ) -> ppb.DeactivateProfileResponse:
        stub = self._stubs().profiles
        return await self._unary(
            stub.DeactivateProfile, request, timeout_s=self._inference.timeout_s
        )

    async def export_profile(self, request: ppb.ExportProfileRequest) -> ppb.ExportProfileResponse:
        stub = self._stubs().profiles
        return await self._unary(stub.ExportProfile, request, timeout_s=self._inference.timeout_s)

    async def import_profile(self, request: ppb.ImportProfileRequest) -> ppb.ImportProfileResponse:
        stub = self._stubs().profiles
        return await self._unary(stub.ImportProfile, request, timeout_s=self._inference.timeout_s)

    # ---------------------------------------------------------------- monitoring

    async def monitor(self, first: monpb.MonitorRequest) -> MonitorStream:
        # No deadline: a live view lasts as long as its viewer; the caller cancels.
        call = self._stubs().monitoring.Monitor(metadata=self._inference.call_metadata())
        stream = _GrpcMonitorStream(call, self._inference.address)
        try:
            await stream.send(first)
        except BaseException:
            call.cancel()
            raise
        return stream

    async def get_monitoring_config(
        self, request: monpb.GetMonitoringConfigRequest
    ) -> monpb.GetMonitoringConfigResponse:
        stub = self._stubs().monitoring
        return await self._unary(
            stub.GetMonitoringConfig, request, timeout_s=self._inference.timeout_s
        )

    async def set_monitoring_config(
        self, request: monpb.SetMonitoringConfigRequest
    ) -> monpb.SetMonitoringConfigResponse:
        stub = self._stubs().monitoring
        return await self._unary(
            stub.SetMonitoringConfig, request, timeout_s=self._inference.timeout_s
        )

    async def get_monitoring_history(
        self, request: monpb.GetMonitoringHistoryRequest
    ) -> monpb.GetMonitoringHistoryResponse:
        stub = self._stubs().monitoring
        return await self._unary(
            stub.GetMonitoringHistory, request, timeout_s=self._inference.timeout_s
        )

    async def get_feature_statistics(
        self, request: monpb.GetFeatureStatisticsRequest
    ) -> monpb.GetFeatureStatisticsResponse:
        stub = self._stubs().monitoring
        return await self._unary(
            stub.GetFeatureStatistics, request, timeout_s=self._inference.timeout_s
        )

    async def export_monitoring_history(
        self, request: monpb.ExportMonitoringHistoryRequest
    ) -> monpb.ExportMonitoringHistoryResponse:
        stub = self._stubs().monitoring
        return await self._unary(
            stub.ExportMonitoringHistory, request, timeout_s=self._inference.timeout_s
        )

    async def clear_monitoring_history(
        self, request: monpb.ClearMonitoringHistoryRequest
    ) -> monpb.ClearMonitoringHistoryResponse:
        stub = self._stubs().monitoring
        return await self._unary(
            stub.ClearMonitoringHistory, request, timeout_s=self._inference.timeout_s
        )

    # ---------------------------------------------------------------- training

    async def start_training(
        self, request: tspb.StartTrainingRequest
    ) -> tspb.StartTrainingResponse:
        stub = self._stubs().training
        return await self._unary(stub.StartTraining, request, timeout_s=self._inference.timeout_s)

    async def get_training_run(
        self, request: tspb.GetTrainingRunRequest
    ) -> tspb.GetTrainingRunResponse:
        stub = self._stubs().training
        return await self._unary(stub.GetTrainingRun, request, timeout_s=self._inference.timeout_s)

    async def list_training_runs(
        self, request: tspb.ListTrainingRunsRequest
    ) -> tspb.ListTrainingRunsResponse:
        stub = self._stubs().training
        return await self._unary(
            stub.ListTrainingRuns, request, timeout_s=self._inference.timeout_s
        )

    async def stop_training(self, request: tspb.StopTrainingRequest) -> tspb.StopTrainingResponse:
        stub = self._stubs().training
        return await self._unary(stub.StopTraining, request, timeout_s=self._inference.timeout_s)

    async def resume_training(
        self, request: tspb.ResumeTrainingRequest
    ) -> tspb.ResumeTrainingResponse:
        stub = self._stubs().training
        return await self._unary(stub.ResumeTraining, request, timeout_s=self._inference.timeout_s)

    async def delete_training_run(
        self, request: tspb.DeleteTrainingRunRequest
    ) -> tspb.DeleteTrainingRunResponse:
        # No deadline: it removes checkpoints and cached activations, which may be gigabytes.
        return await self._unary(self._stubs().training.DeleteTrainingRun, request, timeout_s=None)

    async def list_training_metrics(
        self, request: tspb.ListTrainingMetricsRequest
    ) -> tspb.ListTrainingMetricsResponse:
        stub = self._stubs().training
        return await self._unary(
            stub.ListTrainingMetrics, request, timeout_s=self._inference.timeout_s
        )

    async def watch_training_run(self, run_id: str) -> AsyncIterator[tspb.WatchTrainingRunResponse]:
        # No deadline: a run trains for as long as it trains; the caller cancels by closing.
        call = self._stubs().training.WatchTrainingRun(
            tspb.WatchTrainingRunRequest(id=run_id), metadata=self._inference.call_metadata()
        )
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    raise InferenceError(
                        grpc.StatusCode.INTERNAL,
                        "INTERNAL",
                        "The inference service ended the watch before the run finished.",
                    )
                yield message
                if message.run.state in TRAINING_FINAL_STATES:
                    return
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self._inference.address) from None
        finally:
            call.cancel()

    async def upload_corpus(
        self, requests: AsyncIterable[tspb.UploadCorpusRequest]
    ) -> tspb.UploadCorpusResponse:
        # No deadline: a large corpus takes as long as its sender takes. Written one
        # message at a time (not handed to gRPC as an iterator) so that a failing
        # source raises here instead of silently cancelling the call.
        call = self._stubs().training.UploadCorpus(metadata=self._inference.call_metadata())
        try:
            try:
                async for request in requests:
                    await call.write(request)
                await call.done_writing()
            except asyncio.InvalidStateError:
                pass  # the service ended the call early; awaiting it says why
            return await call
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self._inference.address) from None
        finally:
            call.cancel()

    async def list_corpora(self, request: tspb.ListCorporaRequest) -> tspb.ListCorporaResponse:
        stub = self._stubs().training
        return await self._unary(stub.ListCorpora, request, timeout_s=self._inference.timeout_s)

    async def delete_corpus(self, request: tspb.DeleteCorpusRequest) -> tspb.DeleteCorpusResponse:
        stub = self._stubs().training
        return await self._unary(stub.DeleteCorpus, request, timeout_s=self._inference.timeout_s)

    async def create_training_template(
        self, request: tspb.CreateTrainingTemplateRequest
    ) -> tspb.CreateTrainingTemplateResponse:
        stub = self._stubs().training
        return await self._unary(
            stub.CreateTrainingTemplate, request, timeout_s=self._inference.timeout_s
        )

    async def get_training_template(
        self, request: tspb.GetTrainingTemplateRequest
    ) -> tspb.GetTrainingTemplateResponse:
        stub = self._stubs().training
        return await self._unary(
            stub.GetTrainingTemplate, request, timeout_s=self._inference.timeout_s
        )

    async def list_training_templates(
        self, request: tspb.ListTrainingTemplatesRequest
    ) -> tspb.ListTrainingTemplatesResponse:
        stub = self._stubs().training
        return await self._unary(
            stub.ListTrainingTemplates, request, timeout_s=self._inference.timeout_s
        )

    async def update_training_template(
        self, request: tspb.UpdateTrainingTemplateRequest
    ) -> tspb.UpdateTrainingTemplateResponse:
        stub = self._stubs().training
        return await self._unary(
            stub.UpdateTrainingTemplate, request, timeout_s=self._inference.timeout_s
        )

    async def delete_training_template(
        self, request: tspb.DeleteTrainingTemplateRequest
    ) -> tspb.DeleteTrainingTemplateResponse:
        stub = self._stubs().training
        return await self._unary(
            stub.DeleteTrainingTemplate, request, timeout_s=self._inference.timeout_s
        )

    async def duplicate_training_template(
        self, request: tspb.DuplicateTrainingTemplateRequest
    ) -> tspb.DuplicateTrainingTemplateResponse:
        stub = self._stubs().training
        return await self._unary(
            stub.DuplicateTrainingTemplate, request, timeout_s=self._inference.timeout_s
        )

    async def export_training_template(
        self, request: tspb.ExportTrainingTemplateRequest
    ) -> tspb.ExportTrainingTemplateResponse:
        stub = self._stubs().training
        return await self._unary(
            stub.ExportTrainingTemplate, request, timeout_s=self._inference.timeout_s
        )

    async def import_training_template(
        self, request: tspb.ImportTrainingTemplateRequest
    ) -> tspb.ImportTrainingTemplateResponse:
        stub = self._stubs().training
        return await self._unary(
            stub.ImportTrainingTemplate, request, timeout_s=self._inference.timeout_s
        )
