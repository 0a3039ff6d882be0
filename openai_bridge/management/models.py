"""/api/v1/models: the model cache, downloads, memory estimates, load, unload, delete.

Route order matters: `{id:path}` matches "/" (Hub ids are "org/name"), so the
fixed paths (`download`, `unload`) are registered first, then the
`{id:path}/<verb>` routes, and the bare `{id:path}` routes last.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from millm.v1 import model_service_pb2 as mpb
from openai_bridge.management import translate
from openai_bridge.management.schemas import DownloadBody, EstimateBody, LoadBody
from openai_bridge.state import Management

router = APIRouter(prefix="/api/v1/models")

PageSize = Annotated[int | None, Query()]
PageToken = Annotated[str | None, Query(max_length=1024)]


@router.get("")
async def list_models(
    management: Management, page_size: PageSize = None, page_token: PageToken = None
) -> JSONResponse:
    response = await management.unary(
        management.stubs.models.ListModels, translate.list_models_request(page_size, page_token)
    )
    models = [translate.cached_model(m) for m in response.models]
    return JSONResponse(translate.page(models, response.next_page_token))


@router.post("/download", status_code=202)
async def download_model(body: DownloadBody, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.models.DownloadModel, translate.download_request(body)
    )
    operation = translate.operation(response.operation)
    location = f"/api/v1/operations/{response.operation.id}"
    return JSONResponse(operation, status_code=202, headers={"Location": location})


@router.post("/unload")
async def unload_model(management: Management) -> JSONResponse:
    response = await management.unary(management.stubs.models.UnloadModel, mpb.UnloadModelRequest())
    return JSONResponse(translate.unload_result(response))


@router.post("/{id:path}/estimate")
async def estimate_model_memory(
    id: str, management: Management, body: EstimateBody | None = None
) -> JSONResponse:
    request = translate.estimate_request(id, body or EstimateBody())
    return JSONResponse(
        translate.estimate(
            await management.unary(management.stubs.models.EstimateModelMemory, request)
        )
    )


@router.post("/{id:path}/load")
async def load_model(id: str, management: Management, body: LoadBody | None = None) -> JSONResponse:
    response = await management.unary(
        management.stubs.models.LoadModel, translate.load_request(id, body or LoadBody())
    )
    return JSONResponse(translate.load_result(response))


@router.get("/{id:path}")
async def get_model(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.models.GetModel, mpb.GetModelRequest(id=translate.model_id(id))
    )
    return JSONResponse(translate.cached_model(response.model))


@router.delete("/{id:path}")
async def delete_model(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.models.DeleteModel, mpb.DeleteModelRequest(id=translate.model_id(id))
    )
    return JSONResponse(translate.delete_result(id, response))
