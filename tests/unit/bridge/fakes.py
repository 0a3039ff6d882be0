"""An in-memory InferenceClient, scripted per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.errors import InferenceError
from openai_bridge.inference_client import GenerationStream, InferenceClient


def delta(text: str, *token_ids: int, logprobs: list[pb.TokenLogprob] | None = None):
    return pb.GenerateResponse(
        delta=pb.TokenDelta(text=text, token_ids=token_ids, logprobs=logprobs or [])
    )


def finished(reason: int = pb.FINISH_REASON_STOP, prompt: int = 5, completion: int = 2):
    return pb.GenerateResponse(
        finished=pb.GenerateFinished(
            finish_reason=reason,
            usage=pb.Usage(prompt_tokens=prompt, completion_tokens=completion),
        )
    )


HANG = object()  # a script entry: wait forever (until cancelled)


class FakeStream(GenerationStream):
    def __init__(self, accepted: pb.GenerateAccepted, script: list, hanging: asyncio.Event) -> None:
        self.accepted = accepted
        self._script = script
        self.cancelled = False
        self.hanging = hanging

    async def __aiter__(self) -> AsyncIterator[pb.GenerateResponse]:
        for entry in self._script:
            if entry is HANG:
                self.hanging.set()
                await asyncio.Event().wait()
            if isinstance(entry, BaseException):
                raise entry
            yield entry

    def cancel(self) -> None:
        self.cancelled = True


class FakeInferenceClient(InferenceClient):
    """Records what it was asked; answers from the attributes a test sets."""

    def __init__(self) -> None:
        self.script: list = [delta("Hello", 1), finished()]
        self.generate_error: InferenceError | None = None
        self.starts: list[pb.GenerateStart] = []
        self.streams: list[FakeStream] = []
        self.embed_requests: list[pb.EmbedRequest] = []
        self.embed_response = pb.EmbedResponse(
            embeddings=[pb.Embedding(values=[0.1, -2.5, 3.0])], prompt_tokens=3, model="m"
        )
        self.info = pb.GetServerInfoResponse(
            version="0.1.0",
            model_state=pb.MODEL_STATE_READY,
            model=pb.ModelInfo(id="org/model:q4", loaded_at_unix_s=1_700_000_000),
            queue_depth=3,
            max_queue=16,
            batch=pb.BatchStatus(
                waiting=1,
                active_sequences=2,
                max_batch_size=16,
                occupancy=0.125,
                tokens_per_second=41.5,
                kv_cache_bytes=1024,
                kv_cache_budget_bytes=2**30,
            ),
            memory=pb.MemoryStatus(
                resident_bytes=600 * 2**20,
                system_available_bytes=8 * 2**30,
                device="cuda:0",
                device_allocated_bytes=300 * 2**20,
                device_total_bytes=80 * 2**30,
            ),
        )
        self.info_error: InferenceError | None = None
        # Set when a stream reaches a HANG entry.
        self.hanging = asyncio.Event()

    async def generate(self, start: pb.GenerateStart) -> GenerationStream:
        self.starts.append(start)
        if self.generate_error is not None:
            raise self.generate_error
        accepted = pb.GenerateAccepted(request_id="r1", prompt_tokens=5, model="m")
        stream = FakeStream(accepted, self.script, self.hanging)
        self.streams.append(stream)
        return stream

    async def embed(self, request: pb.EmbedRequest) -> pb.EmbedResponse:
        self.embed_requests.append(request)
        return self.embed_response

    async def tokenize(self, request: pb.TokenizeRequest) -> pb.TokenizeResponse:
        return pb.TokenizeResponse(token_ids=[1, 2], tokens=["a", "b"])

    async def server_info(self) -> pb.GetServerInfoResponse:
        if self.info_error is not None:
            raise self.info_error
        return self.info
