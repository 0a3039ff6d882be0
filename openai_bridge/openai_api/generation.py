"""What chat and legacy completions share: collecting a generation, and client departure.

A client that goes away must not leave the model generating for nobody: a
streaming body cancels its gRPC call in `finally` (Starlette cancels the body
when the connection drops), and a non-streaming handler races the generation
against the ASGI `http.disconnect` message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from fastapi import Request

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.errors import InferenceError
from openai_bridge.inference_client import GenerationStream, InferenceClient
from openai_bridge.openai_api.translate import ResponseIds
from openai_bridge.sse import event_stream

T = TypeVar("T")


@dataclass
class Collected:
    """A whole generation, gathered for a non-streaming response."""

    text: str
    finished: pb.GenerateFinished
    logprobs: list[pb.TokenLogprob] = field(default_factory=list)


async def collect(stream: GenerationStream) -> Collected:
    texts: list[str] = []
    logprobs: list[pb.TokenLogprob] = []
    try:
        async for message in stream:
            if message.WhichOneof("kind") == "delta":
                texts.append(message.delta.text)
                logprobs.extend(message.delta.logprobs)
            elif message.WhichOneof("kind") == "finished":
                return Collected("".join(texts), message.finished, logprobs)
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
    client: InferenceClient, start: pb.GenerateStart, id_prefix: str, created: int, model: str
) -> tuple[GenerationStream, ResponseIds]:
    """Starts a generation and names its response; admission and validation errors
    raise here, before any HTTP status is sent."""
    stream = await client.generate(start)
    ids = ResponseIds(
        id=f"{id_prefix}-{stream.accepted.request_id}",
        created=created,
        model=stream.accepted.model or model,
    )
    return stream, ids
