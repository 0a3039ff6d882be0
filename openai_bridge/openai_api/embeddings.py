"""POST /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from openai_bridge.openai_api import translate
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
    response = await until_disconnected(request, state.client.embed(translate.embed_request(body)))
    return JSONResponse(translate.embeddings(response, body.encoding_format))
