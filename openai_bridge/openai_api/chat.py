"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from openai_bridge.inference_client import GenerationStream
from openai_bridge.openai_api import millm, translate
from openai_bridge.openai_api.generation import Collected, complete, open_generations, sse_body
from openai_bridge.openai_api.protocol import ChatCompletionRequest
from openai_bridge.sse import sse_response
from openai_bridge.state import State

router = APIRouter()

OBJECT_CHUNK = "chat.completion.chunk"


async def chat_chunks(
    stream: GenerationStream,
    ids: translate.ResponseIds,
    include_usage: bool,
    logprobs: bool,
    activations: bool = False,
) -> AsyncIterator[dict[str, Any]]:
    yield translate.chat_chunk(
        ids, {"role": "assistant", "content": ""}, include_usage=include_usage
    )
    async for message in stream:
        if message.WhichOneof("kind") == "delta":
            delta = message.delta
            # Held-back text (a possible stop string) leaves empty deltas; skip them
            # unless they carry logprobs or activations the client asked for.
            if (
                not delta.text
                and not (logprobs and delta.logprobs)
                and not (activations and delta.activations)
            ):
                continue
            yield translate.chat_chunk(
                ids,
                {"content": delta.text},
                include_usage=include_usage,
                logprobs=translate.chat_logprobs(delta.logprobs) if logprobs else None,
                millm=millm.chunk_field(delta.activations) if activations else None,
            )
        elif message.WhichOneof("kind") == "finished":
            finished = message.finished
            yield translate.chat_chunk(
                ids,
                {},
                include_usage=include_usage,
                finish=translate.finish_reason(finished),
            )
            if include_usage:
                yield translate.usage_chunk(ids, OBJECT_CHUNK, finished.usage)
            return


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    state: State,
) -> Response:
    start = translate.chat_start(body)
    extension = millm.for_generation(body.millm, stream=bool(body.stream))
    choice = await millm.choose_model(state.client, start.model)
    prepared = millm.prepare(start, extension, choice)
    opened = await open_generations(
        state.client, start, "chatcmpl", int(state.clock()), choice, prepared
    )
    logprobs = bool(body.logprobs)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = chat_chunks(
            opened.stream, opened.ids, include_usage, logprobs, prepared.activations
        )
        return sse_response(sse_body(opened.stream, chunks))

    def respond(collected: Collected) -> dict[str, Any]:
        return translate.chat_completion(
            opened.ids, collected.text, collected.logprobs if logprobs else None, collected.finished
        )

    return JSONResponse(await complete(request, opened, prepared.activations, respond))
