"""gRPC adapter for millm.v1.FeatureService: statistics, dashboards, search, labels."""

from __future__ import annotations

import asyncio

import grpc

from inference_service.features.manager import FeatureManager
from inference_service.servicers import features_convert, operations_convert
from millm.v1 import feature_service_pb2 as pb
from millm.v1 import feature_service_pb2_grpc as pb_grpc


class FeatureServicer(pb_grpc.FeatureServiceServicer):
    def __init__(self, manager: FeatureManager) -> None:
        self._manager = manager

    async def ComputeFeatureStatistics(
        self, request: pb.ComputeFeatureStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ComputeFeatureStatisticsResponse:
        snapshot = await self._manager.start_statistics(
            request.sae_id,
            request.corpus_id,
            max_tokens=request.max_tokens,
            radius=request.context_radius,
            top_contexts=request.top_contexts,
        )
        return pb.ComputeFeatureStatisticsResponse(operation=operations_convert.operation(snapshot))

    async def GetFeature(
        self, request: pb.GetFeatureRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetFeatureResponse:
        found = await self._manager.feature(request.sae_id, request.index, request.lens_tokens)
        return pb.GetFeatureResponse(feature=features_convert.feature(found))

    async def SearchFeaturesByText(
        self, request: pb.SearchFeaturesByTextRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchFeaturesByTextResponse:
        found = await self._manager.search_text(request.sae_id, request.text, request.limit)
        return features_convert.text_search(found)

    async def ContrastFeatures(
        self, request: pb.ContrastFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ContrastFeaturesResponse:
        measure = features_convert.measure(request.measure)
        found = await self._manager.contrast(
            request.sae_id,
            list(request.positive_texts),
            list(request.negative_texts),
            uppercase=request.transform == pb.TEXT_TRANSFORM_UPPERCASE,
            measure=measure,
            limit=request.limit,
        )
        return features_convert.contrast(found, measure)

    async def SearchFeatureLabels(
        self, request: pb.SearchFeatureLabelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchFeatureLabelsResponse:
        found = await asyncio.to_thread(
            self._manager.search_labels, request.sae_id, request.query, request.limit
        )
        return pb.SearchFeatureLabelsResponse(labels=[features_convert.label(x) for x in found])

    async def SetFeatureLabel(
        self, request: pb.SetFeatureLabelRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetFeatureLabelResponse:
        stored = await asyncio.to_thread(
            self._manager.set_label, request.sae_id, request.index, request.label, request.notes
        )
        response = pb.SetFeatureLabelResponse()
        if stored is not None:
            response.label.CopyFrom(features_convert.label(stored))
        return response

    async def ExportFeatureLabels(
        self, request: pb.ExportFeatureLabelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportFeatureLabelsResponse:
        data = await asyncio.to_thread(self._manager.export_labels, request.sae_id)
        return pb.ExportFeatureLabelsResponse(data=data)

    async def ImportFeatureLabels(
        self, request: pb.ImportFeatureLabelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportFeatureLabelsResponse:
        count = await asyncio.to_thread(
            self._manager.import_labels,
            request.sae_id,
            request.data,
            features_convert.label_format(request.format),
            overwrite=request.overwrite,
        )
        return pb.ImportFeatureLabelsResponse(imported=count.imported, skipped=count.skipped)
