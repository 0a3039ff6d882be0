"""/api/v1/saes/{id}/features and /api/v1/saes/{id}/labels: what a feature does and which
feature does something, for a cached SAE of the served model.

A feature's dashboard (statistics over a corpus, its strongest contexts, the logit
lens), statistics as a background operation, search by text, contrastive search,
and labels with their export and import. The fixed `features/<verb>` paths are
registered before `features/{index}`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from millm.v1 import feature_service_pb2 as fpb
from openai_bridge import proto_json
from openai_bridge.errors import invalid_request
from openai_bridge.management.common import attachment, given, operation_accepted
from openai_bridge.management.schemas import (
    UINT32_MAX,
    FeatureContrastBody,
    FeatureLabelBody,
    FeatureStatisticsBody,
    FeatureTextSearchBody,
    LabelFormatName,
)
from openai_bridge.request_checks import loads_bounded
from openai_bridge.state import Management

router = APIRouter(prefix="/api/v1/saes/{id}")

# Tokens a dashboard lists in each direction of the logit lens.
LENS_TOKENS_MAX = 100
LABEL_QUERY_MAX = 200
LABELS_LIMIT_MAX = 10_000

FeatureIndexPath = Annotated[int, Path(ge=0, le=UINT32_MAX)]

NEGATIVES_REQUIRED = (
    "Send the texts without the behaviour as `negative_texts`, or a `transform` that "
    'makes the pairs from `positive_texts` ("uppercase": their upper-cased copies '
    "against the texts as sent); not both."
)


def contrast_request(id_: str, body: FeatureContrastBody) -> fpb.ContrastFeaturesRequest:
    """Exactly one way to the negative set (the service would ignore one of two)."""
    if body.negative_texts is None and body.transform is None:
        raise invalid_request(NEGATIVES_REQUIRED, "negative_texts")
    if body.negative_texts is not None and body.transform is not None:
        raise invalid_request(NEGATIVES_REQUIRED, "transform")
    return proto_json.message(fpb.ContrastFeaturesRequest, {"sae_id": id_, **given(body)})


# ---------------------------------------------------------------- features/<verb>


@router.post("/features/statistics", status_code=202)
async def compute_feature_statistics(
    id: str, management: Management, body: FeatureStatisticsBody | None = None
) -> JSONResponse:
    request = proto_json.message(fpb.ComputeFeatureStatisticsRequest, {"sae_id": id, **given(body)})
    response = await management.unary(management.stubs.features.ComputeFeatureStatistics, request)
    return operation_accepted(response.operation)


@router.post("/features/search")
async def search_features_by_text(
    id: str, body: FeatureTextSearchBody, management: Management
) -> JSONResponse:
    request = proto_json.message(fpb.SearchFeaturesByTextRequest, {"sae_id": id, **given(body)})
    response = await management.unary(management.stubs.features.SearchFeaturesByText, request)
    return JSONResponse(proto_json.to_json(response))


@router.post("/features/contrast")
async def contrast_features(
    id: str, body: FeatureContrastBody, management: Management
) -> JSONResponse:
    response = await management.unary(
        management.stubs.features.ContrastFeatures, contrast_request(id, body)
    )
    return JSONResponse(proto_json.to_json(response))


# ---------------------------------------------------------------- features/{index}


@router.get("/features/{index}")
async def get_feature(
    id: str,
    index: FeatureIndexPath,
    management: Management,
    lens_tokens: Annotated[int | None, Query(ge=1, le=LENS_TOKENS_MAX)] = None,
) -> JSONResponse:
    request = fpb.GetFeatureRequest(sae_id=id, index=index, lens_tokens=lens_tokens or 0)
    response = await management.unary(management.stubs.features.GetFeature, request)
    return JSONResponse(proto_json.to_json(response.feature))


@router.put("/features/{index}/label")
async def set_feature_label(
    id: str, index: FeatureIndexPath, body: FeatureLabelBody, management: Management
) -> JSONResponse:
    request = fpb.SetFeatureLabelRequest(sae_id=id, index=index, label=body.label, notes=body.notes)
    response = await management.unary(management.stubs.features.SetFeatureLabel, request)
    return JSONResponse(proto_json.to_json(response))


@router.delete("/features/{index}/label")
async def delete_feature_label(
    id: str, index: FeatureIndexPath, management: Management
) -> JSONResponse:
    # An empty label and notes is how the service removes one.
    return await set_feature_label(id, index, FeatureLabelBody(), management)


# ---------------------------------------------------------------- labels


@router.get("/labels")
async def search_feature_labels(
    id: str,
    management: Management,
    query: Annotated[str | None, Query(max_length=LABEL_QUERY_MAX)] = None,
    limit: Annotated[int | None, Query(ge=1, le=LABELS_LIMIT_MAX)] = None,
) -> JSONResponse:
    """Every label, or those whose label or notes contain `query` (any case)."""
    request = fpb.SearchFeatureLabelsRequest(sae_id=id, query=query or "", limit=limit or 0)
    response = await management.unary(management.stubs.features.SearchFeatureLabels, request)
    return JSONResponse(proto_json.page(response.labels))


@router.get("/labels/export", response_model=None)
async def export_feature_labels(id: str, management: Management) -> Response:
    """The service's JSON, byte for byte, as a download."""
    response = await management.unary(
        management.stubs.features.ExportFeatureLabels, fpb.ExportFeatureLabelsRequest(sae_id=id)
    )
    headers = attachment(f"{id}.labels.json", id)
    return Response(response.data, media_type="application/json", headers=headers)


@router.post("/labels/import")
async def import_feature_labels(
    id: str,
    request: Request,
    management: Management,
    format: Annotated[LabelFormatName | None, Query()] = None,
    overwrite: bool = False,
) -> JSONResponse:
    """Takes the file itself: miLLM's export, or with `format=neuronpedia` Neuronpedia's
    explanation export. Parsed here only to refuse what is not JSON with a 400 naming
    the body; the bytes go on verbatim and the service reads them."""
    data = await request.body()
    loads_bounded(data, "The labels file")
    import_request = proto_json.message(
        fpb.ImportFeatureLabelsRequest,
        {"sae_id": id, "data": data, "format": format, "overwrite": overwrite},
    )
    response = await management.unary(management.stubs.features.ImportFeatureLabels, import_request)
    return JSONResponse(proto_json.to_json(response))
