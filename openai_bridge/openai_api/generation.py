"""The one path of chat and legacy completions (and, through chat, the Responses API):
opening a plan's generations (and the unsteered twin for `millm.compare`), streaming
or collecting them, and client departure.

A client that goes away must not leave the model generating for nobody: a
streaming body cancels its gRPC call in `finally` (Starlette cancels the body
when the connection drops), and a non-streaming handler races the generation
against the ASGI `http.disconnect` message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from millm.v1 import inference_service_pb2 as pb
from millm.v1 import steering_pb2 as stpb
from openai_bridge.draining import until_drained
from openai_bridge.errors import InferenceError
from openai_bridge.inference_client import GenerationStream, InferenceClient
from openai_bridge.openai_api import millm
from openai_bridge.openai_api.build import GenerationPlan
from openai_bridge.openai_api.translate import ResponseIds, usage_chunk, usage_total
from openai_bridge.sse import event_stream, sse_response
from openai_bridge.state import BridgeState

T = TypeVar("T")
Chunks = AsyncGenerator[dict[str, Any], None]


@dataclass
class Collected:
    """A whole generation, gathered for a non-streaming response."""

    text: str
    finished: pb.GenerateFinished
    logprobs: list[pb.TokenLogprob] = field(default_factory=list)
    activations: list[stpb.TokenActivations] = field(default_factory=list)


async def collect(stream: GenerationStream) -> Collected:
    texts: list[str] = []
    logprobs: list[pb.TokenLogprob] = []
    activations: list[stpb.TokenActivations] = []
    try:
        async for message in stream:
            if message.WhichOneof("kind") == "delta":
                texts.append(message.delta.text)
                logprobs.extend(message.delta.logprobs)
                activations.extend(message.delta.activations)
            elif message.WhichOneof("kind") == "finished":
                return Collected("".join(texts), message.finished, logprobs, activations)
    finally:
        stream.cancel()
    raise InferenceError(
        grpc.StatusCode.INTERNAL, "INTERNAL", "The generation ended without finishing."
    )


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Runs `work`; cancels it (and so its gRPC call) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if not task.done():
        raise InferenceError(grpc.StatusCode.CANCELLED, None, "The client disconnected.")
    return task.result()


async def collect_all(streams: Sequence[GenerationStream]) -> list[Collected]:
    """Every generation at once; the first failure cancels the others."""
    tasks = [asyncio.ensure_future(collect(s)) for s in streams]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()


@dataclass(frozen=True)
class Opened:
    """Admitted generations (one per choice), named, and the unsteered twin when
    comparing."""

    streams: list[GenerationStream]
    ids: ResponseIds
    unsteered: GenerationStream | None = None

    def cancel(self) -> None:
        for stream in self.streams:
            stream.cancel()


async def open_generations(
    client: InferenceClient, plan: GenerationPlan, id_prefix: str, created: int
) -> Opened:
    """Starts the plan's generations (all or none: a refusal cancels those already
    admitted) and names the response after the first; admission and validation errors
    raise here, before any HTTP status is sent, naming the fields the client sent."""
    streams: list[GenerationStream] = []
    try:
        with millm.client_names(plan.extension):
            for start in plan.starts:
                streams.append(await client.generate(start))
            twin = plan.unsteered
            unsteered = await client.generate(twin) if twin is not None else None
    except BaseException:
        for stream in streams:
            stream.cancel()
        raise
    accepted = streams[0].accepted
    model = plan.model.response_model(accepted.model or plan.model.model)
    ids = ResponseIds(id=f"{id_prefix}-{accepted.request_id}", created=created, model=model)
    return Opened(streams, ids, unsteered)


async def complete(
    request: Request,
    opened: Opened,
    activations: bool,
    respond: Callable[[list[Collected]], dict[str, Any]],
) -> dict[str, Any]:
    """The body of a non-streamed response: `respond(results)`, with the `millm`
    field when activations or a comparison were asked for (both single-choice)."""
    streams = list(opened.streams)
    if opened.unsteered is not None:
        streams.append(opened.unsteered)
    results = await until_disconnected(request, collect_all(streams))
    default = results.pop() if opened.unsteered is not None else None
    payload = respond(results)
    if activations or default is not None:
        payload["millm"] = millm.response_field(
            results[0].activations if activations else None,
            respond([default]) if default is not None else None,
        )
    return payload


async def all_choices(
    opened: Opened,
    choices: Sequence[AsyncIterator[dict[str, Any]]],
    finished: dict[int, pb.GenerateFinished],
    *,
    obj: str,
    include_usage: bool,
    samples: int,
) -> AsyncGenerator[dict[str, Any], None]:
    """A streamed response: every choice's chunks as each is produced, then, when asked,
    the usage chunk (the choices record their `finished` by index, `samples` per
    prompt). Closing it cancels the generations."""
    # One choice is read directly: merging costs a task and a wait per token.
    source = merged(choices) if len(choices) > 1 else choices[0]
    try:
        async for chunk in source:
            yield chunk
        if include_usage:
            usage = usage_total([finished[i] for i in sorted(finished)], samples)
            yield usage_chunk(opened.ids, obj, usage)
    finally:
        opened.cancel()


async def merged(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[T]:
    """Items of several async iterators as each produces them (the choices of a streamed
    response). An error in one ends all."""
    iterators = [aiter(s) for s in streams]
    pending = {asyncio.ensure_future(anext(it)): it for it in iterators}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                iterator = pending.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(iterator))] = iterator
                yield item
    finally:
        for task in pending:
            task.cancel()


async def sse_body(chunks: Chunks) -> AsyncIterator[bytes]:
    """The response body of a streaming generation. Closing `chunks` at the end (also
    when the client left) runs its cleanup, which cancels the gRPC calls."""
    try:
        async for data in event_stream(chunks):
            yield data
    finally:
        await chunks.aclose()


async def run(
    request: Request,
    state: BridgeState,
    client: InferenceClient,
    plan: GenerationPlan,
    id_prefix: str,
    chunks: Callable[[Opened], Chunks],
    respond: Callable[[Opened, list[Collected]], dict[str, Any]],
) -> dict[str, Any] | Chunks:
    """A generation request on `client`'s service: the response object (`respond`
    shapes the collected choices), or when streaming its chunks (`chunks`)."""
    opened = await open_generations(client, plan, id_prefix, int(state.clock()))
    if plan.stream:
        return chunks(opened)
    try:
        return await complete(
            request, opened, plan.activations, lambda results: respond(opened, results)
        )
    finally:
        opened.cancel()


def answer(result: dict[str, Any] | Chunks, state: BridgeState) -> Response:
    """`run`'s result as the HTTP response: JSON, or server-sent events."""
    if isinstance(result, dict):
        return JSONResponse(result)
    return sse_response(sse_body(until_drained(result, state.draining)))
