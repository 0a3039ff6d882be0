"""POST /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from openai_bridge.openai_api import millm, translate
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
    embed = translate.embed_request(body)
    extension = millm.for_embeddings(body.millm)
    choice = await millm.choose_model(state.client, embed.model)
    prepared = millm.prepare_embed(embed, extension, choice)
    with millm.client_names(prepared):
        response = await until_disconnected(request, state.client.embed(embed))
    payload = translate.embeddings(response, body.encoding_format)
    payload["model"] = choice.response_model(payload["model"])
    return JSONResponse(payload)
