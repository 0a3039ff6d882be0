"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from openai_bridge.inference_client import GenerationStream
from openai_bridge.openai_api import translate
from openai_bridge.openai_api.generation import (
    collect,
    open_generation,
    sse_body,
    until_disconnected,
)
from openai_bridge.openai_api.protocol import ChatCompletionRequest
from openai_bridge.sse import sse_response
from openai_bridge.state import State

router = APIRouter()

OBJECT_CHUNK = "chat.completion.chunk"


async def chat_chunks(
    stream: GenerationStream, ids: translate.ResponseIds, include_usage: bool, logprobs: bool
) -> AsyncIterator[dict[str, Any]]:
    yield translate.chat_chunk(
        ids, {"role": "assistant", "content": ""}, include_usage=include_usage
    )
    async for message in stream:
        if message.WhichOneof("kind") == "delta":
            delta = message.delta
            # Held-back text (a possible stop string) leaves empty deltas; skip them
            # unless they carry logprobs the client asked for.
            if not delta.text and not (logprobs and delta.logprobs):
                continue
            yield translate.chat_chunk(
                ids,
                {"content": delta.text},
                include_usage=include_usage,
                logprobs=translate.chat_logprobs(delta.logprobs) if logprobs else None,
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
    stream, ids = await open_generation(
        state.client, translate.chat_start(body), "chatcmpl", int(state.clock()), body.model or ""
    )
    logprobs = bool(body.logprobs)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(sse_body(stream, chat_chunks(stream, ids, include_usage, logprobs)))
    result = await until_disconnected(request, collect(stream))
    return JSONResponse(
        translate.chat_completion(
            ids, result.text, result.logprobs if logprobs else None, result.finished
        )
    )
