"""POST /v1/completions (the legacy text completions API)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from openai_bridge.inference_client import GenerationStream
from openai_bridge.openai_api import millm, translate
from openai_bridge.openai_api.generation import Collected, complete, open_generations, sse_body
from openai_bridge.openai_api.protocol import CompletionRequest
from openai_bridge.sse import sse_response
from openai_bridge.state import State

router = APIRouter()

OBJECT = "text_completion"


async def completion_chunks(
    stream: GenerationStream,
    ids: translate.ResponseIds,
    include_usage: bool,
    logprobs: bool,
    activations: bool = False,
) -> AsyncIterator[dict[str, Any]]:
    text_offset = 0
    async for message in stream:
        if message.WhichOneof("kind") == "delta":
            delta = message.delta
            if (
                not delta.text
                and not (logprobs and delta.logprobs)
                and not (activations and delta.activations)
            ):
                continue
            yield translate.completion_chunk(
                ids,
                delta.text,
                include_usage=include_usage,
                logprobs=(
                    translate.completion_logprobs(delta.logprobs, text_offset) if logprobs else None
                ),
                millm=millm.chunk_field(delta.activations) if activations else None,
            )
            text_offset += sum(len(e.token) for e in delta.logprobs)
        elif message.WhichOneof("kind") == "finished":
            finished = message.finished
            yield translate.completion_chunk(
                ids, "", include_usage=include_usage, finish=translate.finish_reason(finished)
            )
            if include_usage:
                yield translate.usage_chunk(ids, OBJECT, finished.usage)
            return


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    state: State,
) -> Response:
    start = translate.completion_start(body)
    extension = millm.for_generation(body.millm, stream=bool(body.stream))
    choice = await millm.choose_model(state.client, start.model)
    prepared = millm.prepare(start, extension, choice)
    opened = await open_generations(
        state.client, start, "cmpl", int(state.clock()), choice, prepared
    )
    logprobs = body.logprobs is not None
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = completion_chunks(
            opened.stream, opened.ids, include_usage, logprobs, prepared.activations
        )
        return sse_response(sse_body(opened.stream, chunks))

    def respond(collected: Collected) -> dict[str, Any]:
        return translate.text_completion(
            opened.ids, collected.text, collected.logprobs if logprobs else None, collected.finished
        )

    return JSONResponse(await complete(request, opened, prepared.activations, respond))
