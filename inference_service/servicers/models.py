"""gRPC adapter for millm.v1.ModelService: the cache, downloads, loading."""

from __future__ import annotations

import asyncio
import logging

import grpc

from inference_service.errors import InvalidArgumentError
from inference_service.host import ModelHost
from inference_service.models.catalog import BUILTIN_ID, CachedModel, ModelCatalog
from inference_service.models.loading import check_memory, estimate_for, load_options, settings_for
from inference_service.servicers import convert
from inference_service.servicers.paging import next_page_token, page_bounds
from millm.v1 import model_service_pb2 as pb
from millm.v1 import model_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_QUANTIZATIONS = {
    pb.QUANTIZATION_UNSPECIFIED: "none",
    pb.QUANTIZATION_NONE: "none",
    pb.QUANTIZATION_INT8_DYNAMIC: "int8_dynamic",
    pb.QUANTIZATION_BNB_8BIT: "bnb_8bit",
    pb.QUANTIZATION_BNB_4BIT: "bnb_4bit",
}


class ModelServicer(pb_grpc.ModelServiceServicer):
    def __init__(self, host: ModelHost, catalog: ModelCatalog) -> None:
        self._host = host
        self._catalog = catalog

    def _is_loaded(self, model: CachedModel) -> bool:
        settings = self._host.loaded_settings
        if settings is None:
            return False
        source = BUILTIN_ID if model.local_dir is None else str(model.local_dir)
        return settings.model == source

    def _message(self, model: CachedModel) -> pb.CachedModel:
        return convert.cached_model(model, loaded=self._is_loaded(model))

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
            convert.weight_format(request.format),
        )
        return pb.DownloadModelResponse(operation=convert.operation(snapshot))

    async def EstimateModelMemory(
        self, request: pb.EstimateModelMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.EstimateModelMemoryResponse:
        model = await asyncio.to_thread(self._catalog.get, request.id)
        estimate = await asyncio.to_thread(
            estimate_for,
            settings_for(self._host.base_settings, model),
            _spec(request.spec),
            request.sae_bytes,
        )
        return pb.EstimateModelMemoryResponse(**estimate)

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadModelResponse:
        model = await asyncio.to_thread(self._catalog.get, request.id)
        if model.state != "ready":
            raise InvalidArgumentError(
                f"'{model.id}' is {model.state}, not ready; download it again before loading.",
                param="id",
            )
        settings = settings_for(self._host.base_settings, model)
        spec = _spec(request.spec)
        warning = await asyncio.to_thread(check_memory, settings, spec, request.allow_overcommit)
        if warning:
            log.warning("loading %s although it may not fit: %s", model.id, warning)
        load_s = await self._host.switch(settings, load_options(settings, spec))
        return pb.LoadModelResponse(
            model=self._message(model), load_s=load_s, warning=warning or ""
        )

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        before, after = await self._host.unload()
        return pb.UnloadModelResponse(rss_before_bytes=before, rss_after_bytes=after)

    async def DeleteModel(
        self, request: pb.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteModelResponse:
        settings = self._host.loaded_settings
        loaded_source = settings.model if settings is not None else None
        freed = await asyncio.to_thread(self._catalog.delete, request.id, loaded_source)
        return pb.DeleteModelResponse(freed_bytes=freed)


def _spec(spec: pb.LoadSpec) -> dict[str, object]:
    return {
        "dtype": spec.dtype or None,
        "quantization": _QUANTIZATIONS.get(spec.quantization, "none"),
        "device": spec.device or None,
        "context_tokens": spec.context_tokens or None,
    }
