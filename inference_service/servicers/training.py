"""gRPC adapter for millm.v1.TrainingService: SAE training runs, corpora, templates."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator

import grpc

from inference_service.errors import InvalidArgumentError
from inference_service.servicers import training_convert as convert
from inference_service.servicers.paging import next_page_token, page_bounds
from inference_service.training.config import TrainingConfig, with_defaults
from inference_service.training.corpora import CorpusStore
from inference_service.training.manager import TrainingManager
from inference_service.training.templates import TemplateStore
from millm.v1 import training_service_pb2 as pb
from millm.v1 import training_service_pb2_grpc as pb_grpc

_METRICS_LIMIT = 1000
_UPLOAD_CHUNK = 1 << 20


class TrainingServicer(pb_grpc.TrainingServiceServicer):
    def __init__(
        self, runs: TrainingManager, templates: TemplateStore, corpora: CorpusStore
    ) -> None:
        self._runs = runs
        self._templates = templates
        self._corpora = corpora

    # ---- runs ------------------------------------------------------------------------

    async def StartTraining(
        self, request: pb.StartTrainingRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartTrainingResponse:
        def start() -> pb.StartTrainingResponse:
            config = self._config(request)
            record = self._runs.start(request.name, config)
            return pb.StartTrainingResponse(run=convert.run_message(record))

        return await asyncio.to_thread(start)

    def _config(self, request: pb.StartTrainingRequest) -> TrainingConfig:
        if request.template_id:
            base = self._templates.config(request.template_id)
            return base.overlay(convert.given_fields(request.config))
        return with_defaults(convert.config_fields(request.config))

    async def GetTrainingRun(
        self, request: pb.GetTrainingRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTrainingRunResponse:
        record = await asyncio.to_thread(self._runs.get, request.id)
        return pb.GetTrainingRunResponse(run=convert.run_message(record))

    async def ListTrainingRuns(
        self, request: pb.ListTrainingRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTrainingRunsResponse:
        limit, offset = page_bounds(request.page_size, request.page_token)
        records, total = await asyncio.to_thread(self._runs.list_runs, limit, offset)
        return pb.ListTrainingRunsResponse(
            runs=[convert.run_message(r) for r in records],
            next_page_token=next_page_token(offset, limit, total - offset),
        )

    async def StopTraining(
        self, request: pb.StopTrainingRequest, context: grpc.aio.ServicerContext
    ) -> pb.StopTrainingResponse:
        record = await asyncio.to_thread(self._runs.stop, request.id)
        return pb.StopTrainingResponse(run=convert.run_message(record))

    async def ResumeTraining(
        self, request: pb.ResumeTrainingRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResumeTrainingResponse:
        record = await asyncio.to_thread(
            lambda: self._runs.resume(request.id, from_scratch=request.from_scratch)
        )
        return pb.ResumeTrainingResponse(run=convert.run_message(record))

    async def DeleteTrainingRun(
        self, request: pb.DeleteTrainingRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteTrainingRunResponse:
        freed = await asyncio.to_thread(self._runs.delete, request.id)
        return pb.DeleteTrainingRunResponse(freed_bytes=freed)

    async def ListTrainingMetrics(
        self, request: pb.ListTrainingMetricsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTrainingMetricsResponse:
        limit = request.limit or _METRICS_LIMIT
        if limit > 10_000:
            raise InvalidArgumentError("limit must be 1 to 10000.", param="limit")
        after = int(request.after_step) if request.after_step else -1
        metrics = await asyncio.to_thread(self._runs.metrics, request.id, after, limit)
        return pb.ListTrainingMetricsResponse(metrics=[convert.metrics_message(m) for m in metrics])

    async def WatchTrainingRun(
        self, request: pb.WatchTrainingRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchTrainingRunResponse]:
        async for record, metrics in self._runs.watch(request.id):
            yield pb.WatchTrainingRunResponse(
                run=convert.run_message(record),
                metrics=[convert.metrics_message(m) for m in metrics],
            )

    # ---- corpora -----------------------------------------------------------------------

    async def UploadCorpus(
        self,
        request_iterator: AsyncIterator[pb.UploadCorpusRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.UploadCorpusResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "name":
            raise InvalidArgumentError(
                "The first UploadCorpus message must carry the file name.", param="name"
            )
        # Spooled to a temporary file first, so an upload cut short stores nothing
        # and a large one never sits in memory.
        with tempfile.TemporaryFile() as spool:
            size = 0
            async for message in request_iterator:
                size += len(message.data)
                self._corpora.check_size(size)
                await asyncio.to_thread(spool.write, message.data)
            spool.seek(0)
            chunks = iter(lambda: spool.read(_UPLOAD_CHUNK), b"")
            record = await asyncio.to_thread(self._corpora.save, first.name, chunks)
        return pb.UploadCorpusResponse(corpus=convert.corpus_message(record))

    async def ListCorpora(
        self, request: pb.ListCorporaRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCorporaResponse:
        records = await asyncio.to_thread(self._corpora.list)
        return pb.ListCorporaResponse(corpora=[convert.corpus_message(r) for r in records])

    async def DeleteCorpus(
        self, request: pb.DeleteCorpusRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteCorpusResponse:
        await asyncio.to_thread(self._corpora.delete, request.id)
        return pb.DeleteCorpusResponse()

    # ---- templates ---------------------------------------------------------------------

    async def CreateTrainingTemplate(
        self, request: pb.CreateTrainingTemplateRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTrainingTemplateResponse:
        record = await asyncio.to_thread(
            self._templates.create,
            request.name,
            request.description,
            with_defaults(convert.config_fields(request.config)),
            request.favourite,
        )
        return pb.CreateTrainingTemplateResponse(template=convert.template_message(record))

    async def GetTrainingTemplate(
        self, request: pb.GetTrainingTemplateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTrainingTemplateResponse:
        record = await asyncio.to_thread(self._templates.get, request.id)
        return pb.GetTrainingTemplateResponse(template=convert.template_message(record))

    async def ListTrainingTemplates(
        self, request: pb.ListTrainingTemplatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTrainingTemplatesResponse:
        records = await asyncio.to_thread(self._templates.list)
        return pb.ListTrainingTemplatesResponse(
            templates=[convert.template_message(r) for r in records]
        )

    async def UpdateTrainingTemplate(
        self, request: pb.UpdateTrainingTemplateRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateTrainingTemplateResponse:
        config = (
            with_defaults(convert.config_fields(request.config))
            if request.HasField("config")
            else None
        )
        record = await asyncio.to_thread(
            lambda: self._templates.update(
                request.id,
                name=request.name if request.HasField("name") else None,
                description=request.description if request.HasField("description") else None,
                favourite=request.favourite if request.HasField("favourite") else None,
                config=config,
            )
        )
        return pb.UpdateTrainingTemplateResponse(template=convert.template_message(record))

    async def DeleteTrainingTemplate(
        self, request: pb.DeleteTrainingTemplateRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteTrainingTemplateResponse:
        await asyncio.to_thread(self._templates.delete, request.id)
        return pb.DeleteTrainingTemplateResponse()

    async def DuplicateTrainingTemplate(
        self, request: pb.DuplicateTrainingTemplateRequest, context: grpc.aio.ServicerContext
    ) -> pb.DuplicateTrainingTemplateResponse:
        record = await asyncio.to_thread(self._templates.duplicate, request.id, request.name)
        return pb.DuplicateTrainingTemplateResponse(template=convert.template_message(record))

    async def ExportTrainingTemplate(
        self, request: pb.ExportTrainingTemplateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportTrainingTemplateResponse:
        text = await asyncio.to_thread(self._templates.export_json, request.id)
        return pb.ExportTrainingTemplateResponse(json=text)

    async def ImportTrainingTemplate(
        self, request: pb.ImportTrainingTemplateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportTrainingTemplateResponse:
        record = await asyncio.to_thread(self._templates.import_json, request.json, request.name)
        return pb.ImportTrainingTemplateResponse(template=convert.template_message(record))
