"""The bridge's one connection to the inference service, and the four ways to call it.

Routes call the generated stubs through `ServiceCalls` (`await calls.unary(
calls.stubs.saes.ListSaes, request)`), which adds what every call needs: the request
id and API key as metadata, the deadline from one table (`Stubs.without_deadline`),
and one error mapping, so every failure leaves as an `InferenceError` carrying the
gRPC code and the service's `ErrorInfo` reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from millm.v1 import event_service_pb2_grpc as epb_grpc
from millm.v1 import feature_service_pb2_grpc as fpb_grpc
from millm.v1 import inference_service_pb2_grpc as pb_grpc
from millm.v1 import model_service_pb2_grpc as mpb_grpc
from millm.v1 import monitoring_service_pb2_grpc as monpb_grpc
from millm.v1 import operations_service_pb2_grpc as ospb_grpc
from millm.v1 import profile_service_pb2_grpc as ppb_grpc
from millm.v1 import sae_service_pb2_grpc as spb_grpc
from millm.v1 import steering_service_pb2_grpc as stpb_grpc
from millm.v1 import training_service_pb2_grpc as tspb_grpc
from openai_bridge.errors import InferenceError
from openai_bridge.logs import request_id_var

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")

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

# gRPC's own load balancing (no balancer of ours), for a target of several replicas
# (`ipv4:a,b`): `round_robin` spreads the calls over the replicas whose standard health
# check of InferenceService says SERVING (its model is ready and it is not draining),
# and each call, a whole generation stream included, stays on the replica it started
# on. Without it a channel uses gRPC's default, `pick_first`: every call goes to the
# first reachable address.
REPLICAS_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": "millm.v1.InferenceService"},
    }
)


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


@dataclass(frozen=True)
class Stubs:
    """The generated stub of every service, on one channel."""

    inference: pb_grpc.InferenceServiceAsyncStub
    models: mpb_grpc.ModelServiceAsyncStub
    operations: ospb_grpc.OperationsServiceAsyncStub
    saes: spb_grpc.SaeServiceAsyncStub
    steering: stpb_grpc.SteeringServiceAsyncStub
    profiles: ppb_grpc.ProfileServiceAsyncStub
    monitoring: monpb_grpc.MonitoringServiceAsyncStub
    training: tspb_grpc.TrainingServiceAsyncStub
    features: fpb_grpc.FeatureServiceAsyncStub
    events: epb_grpc.EventServiceAsyncStub

    @classmethod
    def on(cls, channel: grpc.aio.Channel) -> Stubs:
        return cls(
            inference=pb_grpc.InferenceServiceStub(channel),
            models=mpb_grpc.ModelServiceStub(channel),
            operations=ospb_grpc.OperationsServiceStub(channel),
            saes=spb_grpc.SaeServiceStub(channel),
            steering=stpb_grpc.SteeringServiceStub(channel),
            profiles=ppb_grpc.ProfileServiceStub(channel),
            monitoring=monpb_grpc.MonitoringServiceStub(channel),
            training=tspb_grpc.TrainingServiceStub(channel),
            features=fpb_grpc.FeatureServiceStub(channel),
            events=epb_grpc.EventServiceStub(channel),
        )

    def without_deadline(self) -> frozenset[Any]:
        """The unary calls that may rightly take minutes; every other unary call gets
        the bridge's request deadline. Streams never have one: they last as long as
        their caller wants and end when it closes them."""
        return frozenset(
            {
                self.models.LoadModel,  # reads a large model from disk
                self.models.UnloadModel,  # waits for running generations to finish
                self.saes.PreviewSaeRepo,  # reads every SAE config of a Hub repository
                self.saes.ImportSae,  # copies and hashes weights that may be gigabytes
                self.saes.AttachSae,  # waits for other SAE changes, loads weights on device
                self.saes.DetachSae,  # waits for other SAE changes to finish first
                self.training.DeleteTrainingRun,  # removes checkpoints, maybe gigabytes
                # reads every text the caller sent through the model, as many as 256 a side
                self.features.ContrastFeatures,
            }
        )


class StreamCall(Generic[Request, Response]):
    """One open streaming call: iterate over the answers, and `send` while doing so
    where the call takes a stream of requests."""

    def __init__(self, call: Any, address: str) -> None:
        self._call = call
        self._address = address

    async def send(self, request: Request) -> None:
        """Sends one message; raises `InferenceError` if the call has failed."""
        try:
            await self._call.write(request)
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self._address) from None
        except asyncio.InvalidStateError:
            return  # the call already ended; reading it reports why

    async def read(self) -> Response | None:
        """The next message; None once the service has ended the stream."""
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self._address) from None
        return None if message is grpc.aio.EOF else message

    async def __aiter__(self) -> AsyncIterator[Response]:
        while (message := await self.read()) is not None:
            yield message

    def cancel(self) -> None:
        """Ends the call. Synchronous, so it is safe in a cancelled `finally`."""
        self._call.cancel()


class ServiceCalls:
    """One `grpc.aio` channel to the service, created lazily on the serving loop.

    grpc ships no type information, so a stub's methods, and so the answers of
    these helpers, are `Any` to a type checker; the generated `*_pb2_grpc.pyi`
    name the message types for readers.
    """

    def __init__(
        self,
        address: str,
        *,
        api_key: str = "",
        timeout_s: float = 30.0,
        service_config: str | None = None,
    ) -> None:
        self.address = address
        self._options: tuple[tuple[str, str | int], ...] = CHANNEL_OPTIONS
        if service_config is not None:
            self._options += (("grpc.service_config", service_config),)
        # Deadline of each unary call but those in `Stubs.without_deadline`.
        self.timeout_s = timeout_s
        self._api_key = api_key
        self._channel: grpc.aio.Channel | None = None
        self._stubs: Stubs | None = None
        self._slow: frozenset[Any] = frozenset()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def stubs(self) -> Stubs:
        # A grpc.aio channel belongs to the loop it was made on.
        loop = asyncio.get_running_loop()
        if self._stubs is None or self._loop is not loop:
            self._channel = grpc.aio.insecure_channel(self.address, options=self._options)
            self._stubs = Stubs.on(self._channel)
            self._slow = self._stubs.without_deadline()
            self._loop = loop
        return self._stubs

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Request id and API key, sent with every call."""
        metadata: tuple[tuple[str, str], ...] = (("x-request-id", request_id_var.get()),)
        if self._api_key:
            metadata += (("authorization", f"Bearer {self._api_key}"),)
        return metadata

    async def unary(self, method: Any, request: Message, *, timeout_s: float | None = None) -> Any:
        """One request, one answer; `timeout_s` replaces the table's deadline."""
        if timeout_s is None and method not in self._slow:
            timeout_s = self.timeout_s
        try:
            return await method(request, metadata=self.metadata(), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self.address) from None

    async def server_stream(self, method: Any, request: Message) -> AsyncIterator[Any]:
        """Yields the answers until the service ends the stream; closing the iterator
        early (`aclose`) cancels the call."""
        call = method(request, metadata=self.metadata())
        try:
            async for message in StreamCall[Message, Any](call, self.address):
                yield message
        finally:
            call.cancel()

    async def client_stream(self, method: Any, requests: AsyncIterable[Message]) -> Any:
        """Sends `requests` as they come, then returns the one answer.

        Written one message at a time (not handed to gRPC as an iterator) so that an
        error raised by `requests` propagates here instead of silently cancelling.
        """
        call = method(metadata=self.metadata())
        try:
            try:
                async for request in requests:
                    await call.write(request)
                await call.done_writing()
            except asyncio.InvalidStateError:
                pass  # the service ended the call early; awaiting it says why
            return await call
        except grpc.aio.AioRpcError as err:
            raise decode_rpc_error(err, self.address) from None
        finally:
            call.cancel()

    def bidi(self, method: Any) -> StreamCall[Any, Any]:
        """Opens a bidirectional stream; the caller must `cancel` it when done."""
        return StreamCall(method(metadata=self.metadata()), self.address)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stubs = self._loop = None
