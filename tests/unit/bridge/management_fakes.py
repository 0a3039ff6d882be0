"""A fake ModelService + OperationsService, scripted per test, served over real gRPC."""

from __future__ import annotations

import asyncio

import grpc

from millm.v1 import model_service_pb2 as mpb
from millm.v1 import model_service_pb2_grpc as mpb_grpc
from millm.v1 import operation_pb2 as opb
from millm.v1 import operations_service_pb2 as ospb
from millm.v1 import operations_service_pb2_grpc as ospb_grpc
from openai_bridge.errors import InferenceError
from tests.fixtures.grpc_server import HANG, Flag, play, service_error

__all__ = ["HANG", "SMOL", "FakeManagementService", "builtin", "cached", "not_found", "operation"]

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def cached(id_: str = SMOL, **fields) -> mpb.CachedModel:
    defaults = {
        "repo_id": id_,
        "revision": "main",
        "commit_sha": "abc123",
        "format": mpb.WEIGHT_FORMAT_SAFETENSORS,
        "parameter_count": 134_515_008,
        "size_bytes": 269_060_381,
        "state": mpb.CACHED_MODEL_STATE_READY,
    }
    return mpb.CachedModel(id=id_, **{**defaults, **fields})


def operation(state: int = opb.OPERATION_STATE_RUNNING, **fields) -> opb.Operation:
    defaults = {
        "id": "op-1",
        "kind": opb.OPERATION_KIND_MODEL_DOWNLOAD,
        "stage": "downloading",
        "target": SMOL,
        "bytes_done": 1000,
        "bytes_total": 4000,
        "bytes_per_s": 500.0,
        "created_at_unix_ms": 1_700_000_000_000,
        "updated_at_unix_ms": 1_700_000_001_000,
    }
    return opb.Operation(state=state, **{**defaults, **fields})


def not_found(what: str = "model") -> InferenceError:
    return InferenceError(
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND" if what == "model" else None,
        f"No such {what}.",
        param="id" if what == "model" else None,
    )


class FakeManagementService(mpb_grpc.ModelServiceServicer, ospb_grpc.OperationsServiceServicer):
    """Answers from `models` and `operations`; records every request in `calls`, by
    the RPC's name in snake case.

    `errors[name]` makes that RPC fail; `watch_script` is what `WatchOperation`
    sends (an exception in it is raised there, HANG waits).
    """

    def __init__(self) -> None:
        self.models: dict[str, mpb.CachedModel] = {SMOL: cached(), "builtin": builtin()}
        self.operations: dict[str, opb.Operation] = {"op-1": operation()}
        self.errors: dict[str, InferenceError] = {}
        self.calls: list[tuple[str, object]] = []
        self.watch_script: list = []
        self.watch_cancelled = Flag()
        self.watch_hanging = Flag()

    def _enter(self, name: str, request: object) -> None:
        self.calls.append((name, request))
        if name in self.errors:
            raise service_error(self.errors[name])

    def _model(self, id_: str) -> mpb.CachedModel:
        if id_ not in self.models:
            raise service_error(not_found("model"))
        return self.models[id_]

    def _operation(self, id_: str) -> opb.Operation:
        if id_ not in self.operations:
            raise service_error(not_found("operation"))
        return self.operations[id_]

    async def ListModels(self, request, context):
        self._enter("list_models", request)
        models = list(self.models.values())
        if request.page_size and len(models) > request.page_size:
            return mpb.ListModelsResponse(models=models[: request.page_size], next_page_token="p2")
        return mpb.ListModelsResponse(models=models)

    async def GetModel(self, request, context):
        self._enter("get_model", request)
        return mpb.GetModelResponse(model=self._model(request.id))

    async def DownloadModel(self, request, context):
        self._enter("download_model", request)
        op = operation(opb.OPERATION_STATE_PENDING, id="op-2", target=request.repo_id, stage="")
        self.operations[op.id] = op
        return mpb.DownloadModelResponse(operation=op)

    async def EstimateModelMemory(self, request, context):
        self._enter("estimate_model_memory", request)
        self._model(request.id)
        return mpb.EstimateModelMemoryResponse(
            weights_bytes=300,
            kv_cache_bytes=50,
            overhead_bytes=25,
            sae_bytes=request.sae_bytes,
            total_bytes=375 + request.sae_bytes,
            available_bytes=1000,
            fits=True,
            device="cpu",
        )

    async def LoadModel(self, request, context):
        self._enter("load_model", request)
        model = mpb.CachedModel()
        model.CopyFrom(self._model(request.id))
        model.loaded = True
        return mpb.LoadModelResponse(model=model, load_s=1.5)

    async def UnloadModel(self, request, context):
        self._enter("unload_model", request)
        return mpb.UnloadModelResponse(rss_before_bytes=2000, rss_after_bytes=500)

    async def DeleteModel(self, request, context):
        self._enter("delete_model", request)
        model = self._model(request.id)
        del self.models[request.id]
        return mpb.DeleteModelResponse(freed_bytes=model.size_bytes)

    async def ListOperations(self, request, context):
        self._enter("list_operations", request)
        return ospb.ListOperationsResponse(operations=list(self.operations.values()))

    async def GetOperation(self, request, context):
        self._enter("get_operation", request)
        return ospb.GetOperationResponse(operation=self._operation(request.id))

    async def CancelOperation(self, request, context):
        self._enter("cancel_operation", request)
        op = self._operation(request.id)
        op.state = opb.OPERATION_STATE_CANCELLED
        return ospb.CancelOperationResponse(operation=op)

    async def WatchOperation(self, request, context):
        self._enter("watch_operation", request.id)
        try:
            async for entry in play(self.watch_script, self.watch_hanging):
                yield ospb.WatchOperationResponse(operation=entry)
        except (asyncio.CancelledError, GeneratorExit):
            self.watch_cancelled.set()
            raise


def builtin() -> mpb.CachedModel:
    return mpb.CachedModel(
        id="builtin",
        format=mpb.WEIGHT_FORMAT_GGUF,
        size_bytes=100,
        state=mpb.CACHED_MODEL_STATE_READY,
        loaded=True,
    )
