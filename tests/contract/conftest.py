"""Fixtures for the contract tests: a real in-process gRPC server and the bridge in front of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from inference_service.interceptors import ErrorInterceptor
from millm.v1 import inference_service_pb2 as pb
from millm.v1 import inference_service_pb2_grpc as pb_grpc
from openai_bridge.app import create_app
from openai_bridge.config import BridgeSettings
from openai_bridge.grpc_calls import ServiceCalls


class ScriptedServicer(pb_grpc.InferenceServiceServicer):
    """Raises `self.error` from every method (when set), the way real handlers fail.

    `self.script`, when set, is what Generate yields after `accepted`; an
    exception in it is raised there, mid-stream. Waits at `self.hang` until cancelled.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.error: BaseException | None = None
        self.script: list = []
        self.delay_s = 0.0
        self.metadata: list[dict[str, str]] = []
        self.cancelled = asyncio.Event()

    def _enter(self, context: grpc.aio.ServicerContext) -> None:
        self.metadata.append({k: v for k, v in context.invocation_metadata() or ()})
        if self.error is not None:
            raise self.error

    async def Generate(self, request_iterator, context):
        start = await anext(aiter(request_iterator))
        assert start.WhichOneof("kind") == "start"
        self._enter(context)
        yield pb.GenerateResponse(
            accepted=pb.GenerateAccepted(request_id="g1", prompt_tokens=3, model="m")
        )
        try:
            for entry in self.script:
                if entry == "hang":
                    await asyncio.Event().wait()
                if isinstance(entry, BaseException):
                    raise entry
                yield entry
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def Embed(self, request, context):
        self._enter(context)
        await asyncio.sleep(self.delay_s)
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=[1.0])], prompt_tokens=1, model="m")

    async def Tokenize(self, request, context):
        self._enter(context)
        return pb.TokenizeResponse(token_ids=[1])

    async def GetServerInfo(self, request, context):
        self._enter(context)
        return pb.GetServerInfoResponse(
            model_state=pb.MODEL_STATE_READY, model=pb.ModelInfo(id="m", loaded_at_unix_s=1)
        )


@pytest.fixture(scope="module")
async def scripted_server() -> AsyncIterator[tuple[ScriptedServicer, str]]:
    servicer = ScriptedServicer()
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture
async def servicer(scripted_server) -> ScriptedServicer:
    servicer, _ = scripted_server
    servicer.reset()
    return servicer


def bridge_for(address: str, **settings) -> tuple[httpx.AsyncClient, ServiceCalls]:
    """The app and its connection to the service, which the caller closes (an
    ASGITransport runs no lifespan)."""
    config = BridgeSettings(inference_address=address, **{"api_key": "", **settings})
    app = create_app(config, clock=lambda: 1_700_000_000)
    transport = httpx.ASGITransport(app=app)
    http = httpx.AsyncClient(transport=transport, base_url="http://bridge")
    return http, app.state.bridge.calls


@pytest.fixture
async def bridge(scripted_server, servicer) -> AsyncIterator[httpx.AsyncClient]:
    """The real app and its gRPC calls, pointed at the scripted server."""
    _, address = scripted_server
    http, client = bridge_for(address, request_timeout_s=0.5)
    async with http:
        yield http
    await client.close()
