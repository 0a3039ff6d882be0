"""What chat and legacy completions share: opening and collecting a generation (and its
unsteered twin for `millm.compare`), and client departure.

A client that goes away must not leave the model generating for nobody: a
streaming body cancels its gRPC call in `finally` (Starlette cancels the body
when the connection drops), and a non-streaming handler races the generation
against the ASGI `http.disconnect` message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from fastapi import Request

from millm.v1 import inference_service_pb2 as pb
from millm.v1 import steering_pb2 as stpb
from openai_bridge.errors import InferenceError
from openai_bridge.inference_client import GenerationStream, InferenceClient
from openai_bridge.openai_api import millm
from openai_bridge.openai_api.translate import ResponseIds
from openai_bridge.sse import event_stream

T = TypeVar("T")


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


async def sse_body(stream: GenerationStream, chunks: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    """The response body of a streaming generation; always cancels the call at the end."""
    try:
        async for data in event_stream(chunks):
            yield data
    finally:
        stream.cancel()


async def open_generation(
    client: InferenceClient,
    start: pb.GenerateStart,
    id_prefix: str,
    created: int,
    choice: millm.ModelChoice,
) -> tuple[GenerationStream, ResponseIds]:
    """Starts a generation and names its response; admission and validation errors
    raise here, before any HTTP status is sent."""
    stream = await client.generate(start)
    ids = ResponseIds(
        id=f"{id_prefix}-{stream.accepted.request_id}",
        created=created,
        model=choice.response_model(stream.accepted.model or choice.model),
    )
    return stream, ids


async def open_unsteered(
    client: InferenceClient, start: pb.GenerateStart, steered: GenerationStream
) -> GenerationStream:
    """Starts the comparison run of `start`; if it cannot start, `steered` is cancelled."""
    try:
        return await client.generate(millm.unsteered(start))
    except BaseException:
        steered.cancel()
        raise


async def collect_pair(
    steered: GenerationStream, unsteered: GenerationStream
) -> tuple[Collected, Collected]:
    """Both generations at once; the first failure cancels the other."""
    tasks = [asyncio.ensure_future(collect(s)) for s in (steered, unsteered)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return tasks[0].result(), tasks[1].result()
    finally:
        for task in tasks:
            task.cancel()


@dataclass(frozen=True)
class Opened:
    """An admitted generation, named, and its unsteered twin when comparing."""

    stream: GenerationStream
    ids: ResponseIds
    unsteered: GenerationStream | None = None


async def open_generations(
    client: InferenceClient,
    start: pb.GenerateStart,
    id_prefix: str,
    created: int,
    choice: millm.ModelChoice,
    prepared: millm.Prepared,
) -> Opened:
    """`open_generation`, plus the comparison run when `millm.compare` asks for it;
    errors about the request's steering name the fields the client sent."""
    with millm.client_names(prepared):
        stream, ids = await open_generation(client, start, id_prefix, created, choice)
        unsteered = await open_unsteered(client, start, stream) if prepared.compare else None
    return Opened(stream, ids, unsteered)


async def complete(
    request: Request,
    opened: Opened,
    activations: bool,
    respond: Callable[[Collected], dict[str, Any]],
) -> dict[str, Any]:
    """The body of a non-streamed response: `respond(result)`, with the `millm`
    field when activations or a comparison were asked for."""
    if opened.unsteered is None:
        result = await until_disconnected(request, collect(opened.stream))
        default = None
    else:
        pair = collect_pair(opened.stream, opened.unsteered)
        result, default = await until_disconnected(request, pair)
    payload = respond(result)
    if activations or default is not None:
        payload["millm"] = millm.response_field(
            result.activations if activations else None,
            respond(default) if default is not None else None,
        )
    return payload
