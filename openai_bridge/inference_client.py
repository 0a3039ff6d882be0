"""The bridge's only door to the inference service: an abstract client and its gRPC form.

Routes depend on `InferenceClient`, so they are tested against an in-memory fake;
`GrpcInferenceClient` is the real one. Every failure leaves this module as an
`InferenceError` carrying the gRPC code and the service's `ErrorInfo` reason.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

import grpc
from google.rpc import error_details_pb2, status_pb2

from millm.v1 import inference_service_pb2 as pb
from millm.v1 import inference_service_pb2_grpc as pb_grpc
from openai_bridge.errors import InferenceError
from openai_bridge.logs import request_id_var

log = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"

# Long prefills look idle to the transport; these match the service's server
# options (it permits pings every 10 s), so connections survive them.
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


class GenerationStream(ABC):
    """One admitted generation: `accepted`, then iterate for deltas and the final `finished`."""

    accepted: pb.GenerateAccepted

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[pb.GenerateResponse]:
        """Yields `delta` messages and then one `finished`; raises `InferenceError`."""

    @abstractmethod
    def cancel(self) -> None:
        """Stops the generation. Synchronous, so it is safe in a cancelled `finally`."""


class InferenceClient(ABC):
    """What the HTTP layer needs from the inference service."""

    @abstractmethod
    async def generate(self, start: pb.GenerateStart) -> GenerationStream:
        """Opens a generation and returns once it is admitted (raises before that otherwise)."""

    @abstractmethod
    async def embed(self, request: pb.EmbedRequest) -> pb.EmbedResponse: ...

    @abstractmethod
    async def tokenize(self, request: pb.TokenizeRequest) -> pb.TokenizeResponse: ...

    @abstractmethod
    async def server_info(self) -> pb.GetServerInfoResponse: ...

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Releases connections."""


def decode_rpc_error(err: grpc.aio.AioRpcError, address: str) -> InferenceError:
    """Reads the `google.rpc.Status` + `ErrorInfo` the service attaches; falls back gracefully."""
    code = err.code()
    raw = next(
        (value for key, value in (err.trailing_metadata() or ()) if key == STATUS_DETAILS_KEY),
        None,
    )
    if isinstance(raw, bytes | bytearray):
        status = status_pb2.Status.FromString(bytes(raw))
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                retry = info.metadata.get("retry_after_s", "")
                return InferenceError(
                    code,
                    info.reason or None,
                    status.message or err.details() or code.name,
                    param=info.metadata.get("param") or None,
                    retry_after_s=int(retry) if retry.isdigit() else None,
                )
    # No ErrorInfo: the status came from the gRPC library itself, not the service.
    if code == grpc.StatusCode.UNAVAILABLE:
        return InferenceError(
            code,
            "SERVICE_UNREACHABLE",
            f"The inference service is unreachable at {address}. Start it with "
            "`millm-inference` (or `python -m inference_service`), or point the bridge "
            "at it with MILLM_INFERENCE_ADDRESS.",
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return InferenceError(code, None, "The inference service did not answer in time.")
    if code == grpc.StatusCode.CANCELLED:
        return InferenceError(code, None, "The request was cancelled.")
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        log.error("inference service failed without details: %s", err.details())
        return InferenceError(
            code, None, "The inference service failed; the details are in its log."
        )
    return InferenceError(code, None, err.details() or code.name)


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


class _GrpcGenerationStream(GenerationStream):
    def __init__(
        self,
        call: grpc.aio.StreamStreamCall,
        accepted: pb.GenerateAccepted,
        address: str,
    ) -> None:
        self._call = call
        self._address = address
        self.accepted = accepted

    async def __aiter__(self) -> AsyncIterator[pb.GenerateResponse]:
        try:
            while True:
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    raise InferenceError(
                        grpc.StatusCode.INTERNAL,
                        "INTERNAL",
                        "The inference service ended the generation without finishing it.",
                    )
                yield message
                if message.WhichOneof("kind") == "finished":
                    return
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self._address) from None

    def cancel(self) -> None:
        self._call.cancel()


class GrpcInferenceClient(InferenceClient):
    """`InferenceClient` over a `grpc.aio` channel, created lazily on the serving loop."""

    def __init__(self, address: str, *, api_key: str = "", timeout_s: float = 30.0) -> None:
        self.address = address
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.InferenceServiceStub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def timeout_s(self) -> float:
        """Deadline of each unary call."""
        return self._timeout_s

    def channel(self) -> grpc.aio.Channel:
        """The one channel to the service; other clients (management) share it."""
        # A grpc.aio channel belongs to the loop it was made on.
        loop = asyncio.get_running_loop()
        if self._channel is None or self._loop is not loop:
            self._channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
            self._stub = pb_grpc.InferenceServiceStub(self._channel)
            self._loop = loop
        return self._channel

    def _get_stub(self) -> pb_grpc.InferenceServiceStub:
        self.channel()
        assert self._stub is not None
        return self._stub

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """Request id and API key, sent with every call."""
        return self._metadata()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        metadata: tuple[tuple[str, str], ...] = (("x-request-id", request_id_var.get()),)
        if self._api_key:
            metadata += (("authorization", f"Bearer {self._api_key}"),)
        return metadata

    async def generate(self, start: pb.GenerateStart) -> GenerationStream:
        call = self._get_stub().Generate(metadata=self._metadata())
        try:
            await call.write(pb.GenerateRequest(start=start))
            first = await call.read()
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self.address) from None
        except BaseException:
            call.cancel()
            raise
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "accepted":
            call.cancel()
            raise InferenceError(
                grpc.StatusCode.INTERNAL,
                "INTERNAL",
                "The inference service did not accept the generation.",
            )
        return _GrpcGenerationStream(call, first.accepted, self.address)

    async def embed(self, request: pb.EmbedRequest) -> pb.EmbedResponse:
        try:
            timeout = embed_timeout_s(request, self._timeout_s)
            return await self._get_stub().Embed(request, metadata=self._metadata(), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self.address) from None

    async def tokenize(self, request: pb.TokenizeRequest) -> pb.TokenizeResponse:
        try:
            return await self._get_stub().Tokenize(
                request, metadata=self._metadata(), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self.address) from None

    async def server_info(self) -> pb.GetServerInfoResponse:
        try:
            return await self._get_stub().GetServerInfo(
                pb.GetServerInfoRequest(), metadata=self._metadata(), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self.address) from None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = self._loop = None
