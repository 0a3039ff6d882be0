"""POST /v1/completions (the legacy text completions API)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.inference_client import GenerationStream
from openai_bridge.openai_api import build, generation, millm, translate
from openai_bridge.openai_api.build import GenerationPlan
from openai_bridge.openai_api.generation import Chunks, Collected, Opened, all_choices
from openai_bridge.openai_api.protocol import CompletionRequest
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
    plan: GenerationPlan,
    *,
    echo: bool,
    include_usage: bool,
    logprobs: bool,
) -> Chunks:
    finished: dict[int, pb.GenerateFinished] = {}
    choices = [
        choice_chunks(
            stream,
            opened.ids,
            index=i,
            echo=_echo_text(start, stream) if echo else "",
            include_usage=include_usage,
            logprobs=logprobs,
            activations=plan.activations,
            finished=finished,
        )
        for i, (start, stream) in enumerate(zip(plan.starts, opened.streams, strict=True))
    ]
    return all_choices(
        opened, choices, finished, obj=OBJECT, include_usage=include_usage, samples=plan.samples
    )


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request, state: State) -> Response:
    client, model = await millm.choose_model(state.services, body.model or "")
    plan = build.completion(body, model)
    logprobs = body.logprobs is not None
    echo = bool(body.echo)

    def chunks(opened: Opened) -> Chunks:
        return completion_chunks(
            opened, plan, echo=echo, include_usage=body.include_usage, logprobs=logprobs
        )

    def respond(opened: Opened, results: list[Collected]) -> dict[str, Any]:
        # Not strict: a comparison's unsteered choice is shaped alone, as the first's.
        choices = [
            translate.completion_choice(
                i,
                r.text,
                r.logprobs if logprobs else None,
                r.finished,
                _echo_text(start, stream) if echo else "",
            )
            for i, (r, start, stream) in enumerate(
                zip(results, plan.starts, opened.streams, strict=False)
            )
        ]
        usage = translate.usage_total([r.finished for r in results], plan.samples)
        return translate.text_completion(opened.ids, choices, usage)

    result = await generation.run(request, state, client, plan, "cmpl", chunks, respond)
    return generation.answer(result, state)
