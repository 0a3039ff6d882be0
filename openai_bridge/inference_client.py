"""InferenceService's calls for the OpenAI routes: generations, embeddings, server info.

Management routes call their stubs through `ServiceCalls` directly; these three
carry logic of their own (a generation's admission and end, the embedding
deadline), so they live here once for every route that needs them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.errors import InferenceError
from openai_bridge.grpc_calls import ServiceCalls, StreamCall

# An embedding batch's deadline grows with its work, so a large batch is not cut
# off (504) by the fixed deadline of small calls. Generous on purpose: one forward
# pass per input, and a token id counts as four characters (about a token's text).
EMBED_S_PER_INPUT = 0.5
EMBED_S_PER_1000_CHARS = 1.0


def embed_timeout_s(request: pb.EmbedRequest, base_s: float) -> float:
    """base + 0.5 s per input + 1 s per 1000 characters of input text."""
    chars = sum(
        4 * len(item.token_ids.ids) if item.WhichOneof("input") == "token_ids" else len(item.text)
        for item in request.inputs
    )
    return base_s + EMBED_S_PER_INPUT * len(request.inputs) + EMBED_S_PER_1000_CHARS * chars / 1000


class GenerationStream:
    """One admitted generation: `accepted`, then iterate for deltas and the final `finished`."""

    def __init__(
        self,
        call: StreamCall[pb.GenerateRequest, pb.GenerateResponse],
        accepted: pb.GenerateAccepted,
    ) -> None:
        self._call = call
        self.accepted = accepted

    async def __aiter__(self) -> AsyncIterator[pb.GenerateResponse]:
        """Yields `delta` messages and then one `finished`; raises `InferenceError`."""
        async for message in self._call:
            yield message
            if message.WhichOneof("kind") == "finished":
                return
        raise InferenceError(
            grpc.StatusCode.INTERNAL,
            "INTERNAL",
            "The inference service ended the generation without finishing it.",
        )

    def cancel(self) -> None:
        """Stops the generation. Synchronous, so it is safe in a cancelled `finally`."""
        self._call.cancel()


class InferenceClient:
    """What the OpenAI routes ask of InferenceService."""

    def __init__(self, calls: ServiceCalls) -> None:
        self.calls = calls

    async def generate(self, start: pb.GenerateStart) -> GenerationStream:
        """Opens a generation and returns once it is admitted (raises before that otherwise)."""
        call = self.calls.bidi(self.calls.stubs.inference.Generate)
        try:
            await call.send(pb.GenerateRequest(start=start))
            first = await call.read()
        except BaseException:
            call.cancel()
            raise
        if first is None or first.WhichOneof("kind") != "accepted":
            call.cancel()
            raise InferenceError(
                grpc.StatusCode.INTERNAL,
                "INTERNAL",
                "The inference service did not accept the generation.",
            )
        return GenerationStream(call, first.accepted)

    async def embed(self, request: pb.EmbedRequest) -> pb.EmbedResponse:
        timeout_s = embed_timeout_s(request, self.calls.timeout_s)
        return await self.calls.unary(
            self.calls.stubs.inference.Embed, request, timeout_s=timeout_s
        )

    async def server_info(self, timeout_s: float | None = None) -> pb.GetServerInfoResponse:
        request = pb.GetServerInfoRequest()
        return await self.calls.unary(
            self.calls.stubs.inference.GetServerInfo, request, timeout_s=timeout_s
        )
