"""gRPC adapter for millm.v1.ModelService: the cache, downloads, loading."""

from __future__ import annotations

import asyncio

import grpc

from inference_service.errors import InvalidArgumentError
from inference_service.models.catalog import CachedModel, ModelCatalog
from inference_service.models.manager import ModelManager
from inference_service.servicers import models_convert, operations_convert
from inference_service.servicers.paging import next_page_token, page_bounds
from millm.v1 import model_service_pb2 as pb
from millm.v1 import model_service_pb2_grpc as pb_grpc


class ModelServicer(pb_grpc.ModelServiceServicer):
    def __init__(self, models: ModelManager, catalog: ModelCatalog) -> None:
        self._models = models
        self._catalog = catalog

    def _message(self, model: CachedModel) -> pb.CachedModel:
        return models_convert.cached_model(model, loaded=self._models.is_loaded(model))

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        limit, offset = page_bounds(request.page_size, request.page_token)
        models = await asyncio.to_thread(self._catalog.list)
        page = models[offset : offset + limit + 1]
        return pb.ListModelsResponse(
            models=[self._message(m) for m in page[:limit]],
            next_page_token=next_page_token(offset, limit, len(page)),
        )

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelResponse:
        model = await asyncio.to_thread(self._catalog.get, request.id)
        return pb.GetModelResponse(model=self._message(model))

    async def DownloadModel(
        self, request: pb.DownloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.DownloadModelResponse:
        repo_id = request.repo_id.strip()
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise InvalidArgumentError(
                "`repo_id` must look like 'owner/name', "
                "for example 'HuggingFaceTB/SmolLM2-135M-Instruct'.",
                param="repo_id",
            )
        snapshot = self._catalog.start_download(
            repo_id,
            request.revision or "main",
            request.token or None,
            models_convert.weight_format(request.format),
        )
        return pb.DownloadModelResponse(operation=operations_convert.operation(snapshot))

    async def EstimateModelMemory(
        self, request: pb.EstimateModelMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.EstimateModelMemoryResponse:
        estimate = await self._models.estimate(
            models_convert.load_spec(request.id, request.spec), request.sae_bytes
        )
        return models_convert.memory_estimate(estimate)

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadModelResponse:
        loaded = await self._models.load(
            models_convert.load_spec(
                request.id, request.spec, allow_overcommit=request.allow_overcommit
            )
        )
        return pb.LoadModelResponse(
            model=self._message(loaded.model), load_s=loaded.load_s, warning=loaded.warning or ""
        )

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        before, after = await self._models.unload()
        return pb.UnloadModelResponse(rss_before_bytes=before, rss_after_bytes=after)

    async def DeleteModel(
        self, request: pb.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteModelResponse:
        return pb.DeleteModelResponse(freed_bytes=await self._models.delete(request.id))
