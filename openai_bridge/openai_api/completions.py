"""POST /v1/completions (the legacy text completions API)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.draining import until_drained
from openai_bridge.inference_client import GenerationStream
from openai_bridge.openai_api import millm, translate
from openai_bridge.openai_api.generation import (
    Collected,
    Opened,
    all_choices,
    complete,
    open_generations,
    sse_body,
)
from openai_bridge.openai_api.protocol import CompletionRequest
from openai_bridge.sse import sse_response
from openai_bridge.state import State

router = APIRouter()

OBJECT = "text_completion"


def _echo_text(start: pb.GenerateStart, stream: GenerationStream) -> str:
    """The prompt as `echo` shows it: as sent, or for token ids as the service read them."""
    return start.prompt if start.WhichOneof("input") == "prompt" else stream.accepted.prompt_text


async def choice_chunks(
    stream: GenerationStream,
    ids: translate.ResponseIds,
    *,
    index: int,
    echo: str,
    include_usage: bool,
    logprobs: bool,
    activations: bool,
    finished: dict[int, pb.GenerateFinished],
) -> AsyncIterator[dict[str, Any]]:
    def chunk(text: str, **extra: Any) -> dict[str, Any]:
        return translate.completion_chunk(
            ids, text, include_usage=include_usage, index=index, **extra
        )

    if echo:
        yield chunk(echo)
    text_offset = len(echo)
    async for message in stream:
        if message.WhichOneof("kind") == "delta":
            delta = message.delta
            if (
                not delta.text
                and not (logprobs and delta.logprobs)
                and not (activations and delta.activations)
            ):
                continue
            yield chunk(
                delta.text,
                logprobs=(
                    translate.completion_logprobs(delta.logprobs, text_offset) if logprobs else None
                ),
                millm=millm.chunk_field(delta.activations) if activations else None,
            )
            text_offset += sum(len(e.token) for e in delta.logprobs)
        elif message.WhichOneof("kind") == "finished":
            finished[index] = message.finished
            yield chunk("", finish=translate.finish_reason(message.finished))
            return


def completion_chunks(
    opened: Opened,
    starts: list[pb.GenerateStart],
    plan: translate.CompletionPlan,
    *,
    include_usage: bool,
    logprobs: bool,
    activations: bool,
) -> AsyncGenerator[dict[str, Any], None]:
    finished: dict[int, pb.GenerateFinished] = {}
    choices = [
        choice_chunks(
            stream,
            opened.ids,
            index=i,
            echo=_echo_text(start, stream) if plan.echo else "",
            include_usage=include_usage,
            logprobs=logprobs,
            activations=activations,
            finished=finished,
        )
        for i, (start, stream) in enumerate(zip(starts, opened.streams, strict=True))
    ]
    return all_choices(
        opened, choices, finished, obj=OBJECT, include_usage=include_usage, samples=plan.n
    )


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    state: State,
) -> Response:
    plan = translate.completion_start(body)
    extension = millm.for_generation(body.millm, stream=bool(body.stream))
    choice = await millm.choose_model(state.client, plan.start.model)
    prepared = millm.prepare(plan.start, extension, choice)
    starts = plan.choice_starts()
    opened = await open_generations(
        state.client, starts, "cmpl", int(state.clock()), choice, prepared
    )
    logprobs = body.logprobs is not None
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = completion_chunks(
            opened,
            starts,
            plan,
            include_usage=include_usage,
            logprobs=logprobs,
            activations=prepared.activations,
        )
        return sse_response(sse_body(until_drained(chunks, state.draining)))

    def respond(results: list[Collected]) -> dict[str, Any]:
        choices = [
            translate.completion_choice(
                i,
                r.text,
                r.logprobs if logprobs else None,
                r.finished,
                _echo_text(start, stream) if plan.echo else "",
            )
            for i, (r, start, stream) in enumerate(
                zip(results, starts, opened.streams, strict=False)
            )
        ]
        usage = translate.usage_total([r.finished for r in results], plan.n)
        return translate.text_completion(opened.ids, choices, usage)

    return JSONResponse(await complete(request, opened, prepared.activations, respond))
