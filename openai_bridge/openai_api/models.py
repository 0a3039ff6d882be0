"""GET /v1/models and /v1/models/{id}: answered from GetServerInfo, which never queues."""

from __future__ import annotations

import grpc
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.errors import InferenceError
from openai_bridge.openai_api import translate
from openai_bridge.state import BridgeState, State

router = APIRouter()


async def _served_models(state: BridgeState) -> list[pb.ModelInfo]:
    info = await state.client.server_info()
    if info.model_state == pb.MODEL_STATE_READY and info.HasField("model"):
        return [info.model]
    return []


@router.get("/v1/models")
async def list_models(state: State) -> JSONResponse:
    models = await _served_models(state)
    return JSONResponse({"object": "list", "data": [translate.model_card(m) for m in models]})


# `:path` because model ids may contain "/" (Hub ids) and ":".
@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, state: State) -> JSONResponse:
    for model in await _served_models(state):
        if model.id == model_id:
            return JSONResponse(translate.model_card(model))
    raise InferenceError(
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        f"The model `{model_id}` does not exist or is not being served.",
        param="model",
    )
