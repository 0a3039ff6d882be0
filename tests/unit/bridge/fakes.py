"""A fake InferenceService, scripted per test, served over real gRPC (see grpc_server.py)."""

from __future__ import annotations

from millm.v1 import inference_service_pb2 as pb
from millm.v1 import inference_service_pb2_grpc as pb_grpc
from openai_bridge.errors import InferenceError
from tests.fixtures.grpc_server import HANG, Flag, play, service_error

__all__ = ["HANG", "FakeInferenceService", "delta", "finished"]


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


# How long `FakeStream.cancelled` waits for the bridge's cancel to reach the service.
CANCEL_WAIT_S = 5.0


class FakeStream:
    """One Generate call as the service saw it."""

    def __init__(self) -> None:
        self.closed = Flag()

    @property
    def cancelled(self) -> bool:
        """The call is over: the bridge closed it, or the script ended it with an error
        (then there is nothing left for the bridge to close). Waits for the close to
        arrive, as it comes over the network."""
        return self.closed.wait_blocking(CANCEL_WAIT_S)


class FakeInferenceService(pb_grpc.InferenceServiceServicer):
    """Records what it was asked; answers from the attributes a test sets.

    Generate answers `accepted`, then `script` (an exception in it is raised there,
    HANG waits), then keeps the call open until the bridge closes it.
    """

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
        self.hanging = Flag()

    async def Generate(self, request_iterator, context):
        requests = aiter(request_iterator)
        self.starts.append((await anext(requests)).start)
        if self.generate_error is not None:
            raise service_error(self.generate_error)
        stream = FakeStream()
        self.streams.append(stream)
        yield pb.GenerateResponse(
            accepted=pb.GenerateAccepted(request_id="r1", prompt_tokens=5, model="m")
        )
        try:
            async for entry in play(self.script, self.hanging):
                yield entry
            async for _ in requests:
                pass  # the bridge sends nothing more; this ends when it closes the call
        finally:
            stream.closed.set()

    async def Embed(self, request, context):
        self.embed_requests.append(request)
        return self.embed_response

    async def GetServerInfo(self, request, context):
        if self.info_error is not None:
            raise service_error(self.info_error)
        return self.info
