"""/api/v1/models: the model cache, downloads, memory estimates, load, unload, delete.

Route order matters: `{id:path}` matches "/" (Hub ids are "org/name"), so the
fixed paths (`download`, `unload`) are registered first, then the
`{id:path}/<verb>` routes, and the bare `{id:path}` routes last.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from millm.v1 import model_service_pb2 as mpb
from openai_bridge import proto_json
from openai_bridge.errors import invalid_request
from openai_bridge.management.common import (
    PageSize,
    PageToken,
    given,
    operation_accepted,
    paging,
)
from openai_bridge.management.schemas import DownloadBody, EstimateBody, LoadBody, LoadSpecBody
from openai_bridge.state import Management

router = APIRouter(prefix="/api/v1/models")


def model_id(raw: str) -> str:
    """The `{id}` path segment(s); ids contain "/" but are never empty."""
    if not raw.strip("/"):
        raise invalid_request("The model id in the path is empty.", "id")
    return raw


def load_spec(body: LoadSpecBody) -> mpb.LoadSpec:
    spec = body.model_dump(include=set(LoadSpecBody.model_fields), exclude_none=True)
    return proto_json.message(mpb.LoadSpec, spec)


def estimate_request(id_: str, body: EstimateBody) -> mpb.EstimateModelMemoryRequest:
    return mpb.EstimateModelMemoryRequest(
        id=model_id(id_), spec=load_spec(body), sae_bytes=body.sae_bytes or 0
    )


def load_request(id_: str, body: LoadBody) -> mpb.LoadModelRequest:
    return mpb.LoadModelRequest(
        id=model_id(id_), spec=load_spec(body), allow_overcommit=body.allow_overcommit
    )


@router.get("")
async def list_models(
    management: Management, page_size: PageSize = None, page_token: PageToken = None
) -> JSONResponse:
    response = await management.unary(
        management.stubs.models.ListModels, mpb.ListModelsRequest(**paging(page_size, page_token))
    )
    return JSONResponse(proto_json.page(response.models, response.next_page_token))


@router.post("/download", status_code=202)
async def download_model(body: DownloadBody, management: Management) -> JSONResponse:
    request = proto_json.message(mpb.DownloadModelRequest, given(body))
    response = await management.unary(management.stubs.models.DownloadModel, request)
    return operation_accepted(response.operation)


@router.post("/unload")
async def unload_model(management: Management) -> JSONResponse:
    response = await management.unary(management.stubs.models.UnloadModel, mpb.UnloadModelRequest())
    return JSONResponse(proto_json.to_json(response))


@router.post("/{id:path}/estimate")
async def estimate_model_memory(
    id: str, management: Management, body: EstimateBody | None = None
) -> JSONResponse:
    request = estimate_request(id, body or EstimateBody())
    return JSONResponse(
        proto_json.to_json(
            await management.unary(management.stubs.models.EstimateModelMemory, request)
        )
    )


@router.post("/{id:path}/load")
async def load_model(id: str, management: Management, body: LoadBody | None = None) -> JSONResponse:
    response = await management.unary(
        management.stubs.models.LoadModel, load_request(id, body or LoadBody())
    )
    return JSONResponse(proto_json.to_json(response))


@router.get("/{id:path}")
async def get_model(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.models.GetModel, mpb.GetModelRequest(id=model_id(id))
    )
    return JSONResponse(proto_json.to_json(response.model))


@router.delete("/{id:path}")
async def delete_model(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.models.DeleteModel, mpb.DeleteModelRequest(id=model_id(id))
    )
    return JSONResponse({"id": id, "deleted": True, **proto_json.to_json(response)})
