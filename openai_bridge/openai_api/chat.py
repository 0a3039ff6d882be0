"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.inference_client import GenerationStream
from openai_bridge.openai_api import build, generation, millm, translate
from openai_bridge.openai_api.generation import Chunks, Collected, Opened, all_choices
from openai_bridge.openai_api.protocol import ChatCompletionRequest
from openai_bridge.openai_api.tool_calls import (
    CallArguments,
    CallStarted,
    Content,
    Event,
    ToolCallParser,
    ToolMode,
)
from openai_bridge.state import BridgeState, State

router = APIRouter()

OBJECT_CHUNK = "chat.completion.chunk"


def _tool_delta(event: Event, tool_mode: ToolMode) -> dict[str, Any] | None:
    """One parser event as a chunk's delta, in OpenAI's order: a call's index, id, type
    and name first, then its arguments in pieces. The legacy `functions` shape has one
    call only; later calls are dropped."""
    if isinstance(event, Content):
        return {"content": event.text}
    if tool_mode == "functions":
        if event.index > 0:
            return None
        if isinstance(event, CallStarted):
            return {"function_call": {"name": event.name, "arguments": ""}}
        return {"function_call": {"arguments": event.text}}
    if isinstance(event, CallStarted):
        call = {"name": event.name, "arguments": ""}
        return {
            "tool_calls": [
                {"index": event.index, "id": event.id, "type": "function", "function": call}
            ]
        }
    assert isinstance(event, CallArguments)
    return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}


async def choice_chunks(
    stream: GenerationStream,
    ids: translate.ResponseIds,
    *,
    index: int,
    include_usage: bool,
    logprobs: bool,
    activations: bool,
    tool_mode: ToolMode,
    finished: dict[int, pb.GenerateFinished],
) -> AsyncIterator[dict[str, Any]]:
    """The chunks of one choice; its `finished` message is appended to `finished`."""

    def chunk(delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return translate.chat_chunk(ids, delta, include_usage=include_usage, index=index, **extra)

    parser = ToolCallParser() if tool_mode != "none" else None
    # With tools the reply may be calls only, whose content is null: the first chunk
    # then leaves content out rather than starting it as "".
    yield chunk({"role": "assistant"} if parser else {"role": "assistant", "content": ""})
    async for message in stream:
        if message.WhichOneof("kind") == "delta":
            delta = message.delta
            if parser is None:
                deltas = [{"content": delta.text}] if delta.text else []
            else:
                deltas = [d for e in parser.push(delta.text) if (d := _tool_delta(e, tool_mode))]
            # Held-back text (a possible stop string or tag) leaves a delta empty; it is
            # sent anyway when it carries logprobs or activations the client asked for.
            extra: dict[str, Any] = {}
            if logprobs and delta.logprobs:
                extra["logprobs"] = translate.chat_logprobs(delta.logprobs)
            if activations and delta.activations:
                extra["millm"] = millm.chunk_field(delta.activations)
            if not deltas and extra:
                deltas = [{"content": ""}]
            for i, d in enumerate(deltas):
                yield chunk(d, **(extra if i == 0 else {}))
        elif message.WhichOneof("kind") == "finished":
            ending = parser.finish() if parser is not None else []
            for d in (d for e in ending if (d := _tool_delta(e, tool_mode))):
                yield chunk(d)
            finished[index] = message.finished
            reason = translate.finish_reason(message.finished)
            if parser is not None:
                reason = translate.call_finish_reason(reason, bool(parser.calls), tool_mode)
            yield chunk({}, finish=reason)
            return


def chat_chunks(
    opened: Opened,
    *,
    include_usage: bool,
    logprobs: bool,
    activations: bool,
    tool_mode: ToolMode,
) -> Chunks:
    """Every choice's chunks, interleaved as produced, then the usage chunk. Closing
    this generator cancels the generations."""
    finished: dict[int, pb.GenerateFinished] = {}
    choices = [
        choice_chunks(
            stream,
            opened.ids,
            index=i,
            include_usage=include_usage,
            logprobs=logprobs,
            activations=activations,
            tool_mode=tool_mode,
            finished=finished,
        )
        for i, stream in enumerate(opened.streams)
    ]
    return all_choices(
        opened,
        choices,
        finished,
        obj=OBJECT_CHUNK,
        include_usage=include_usage,
        samples=len(choices),
    )


async def run_chat(
    body: ChatCompletionRequest, request: Request, state: BridgeState
) -> dict[str, Any] | Chunks:
    """A chat completion: the response object, or when streaming its chunks. Shared
    with the Responses API, which reshapes either."""
    client, model = await millm.choose_model(state.services, body.model or "")
    plan, tool_mode = build.chat(body, model)
    logprobs = bool(body.logprobs)

    def chunks(opened: Opened) -> Chunks:
        return chat_chunks(
            opened,
            include_usage=body.include_usage,
            logprobs=logprobs,
            activations=plan.activations,
            tool_mode=tool_mode,
        )

    def respond(opened: Opened, results: list[Collected]) -> dict[str, Any]:
        choices = [
            translate.chat_choice(
                i, r.text, r.logprobs if logprobs else None, r.finished, tool_mode
            )
            for i, r in enumerate(results)
        ]
        usage = translate.usage_total([r.finished for r in results], len(results))
        return translate.chat_completion(opened.ids, choices, usage)

    return await generation.run(request, state, client, plan, "chatcmpl", chunks, respond)


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, state: State
) -> Response:
    return generation.answer(await run_chat(body, request, state), state)
