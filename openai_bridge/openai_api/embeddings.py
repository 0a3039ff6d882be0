"""POST /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from openai_bridge.openai_api import build, millm, translate
from openai_bridge.openai_api.generation import until_disconnected
from openai_bridge.openai_api.protocol import EmbeddingRequest
from openai_bridge.state import State

router = APIRouter()


@router.post("/v1/embeddings")
async def create_embeddings(
    body: EmbeddingRequest,
    request: Request,
    state: State,
) -> JSONResponse:
    client, model = await millm.choose_model(state.services, body.model or "")
    embed, extension = build.embed_request(body, model)
    with millm.client_names(extension):
        response = await until_disconnected(request, client.embed(embed))
    payload = translate.embeddings(response, body.encoding_format)
    payload["model"] = model.response_model(payload["model"])
    return JSONResponse(payload)
