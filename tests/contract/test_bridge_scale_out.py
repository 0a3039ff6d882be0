"""One bridge in front of several real inference services (docs/scale-out.md): two
replicas of one model behind a gRPC multi-address target that gRPC's round_robin
balances, and a third service serving the same built-in weights under another id.
Driven over real HTTP (uvicorn) with the official `openai` SDK and httpx."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import httpx
import openai
import pytest
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inference_service.engine.loader import BUILTIN_MODEL_ID
from millm.v1 import model_service_pb2 as mpb
from millm.v1 import model_service_pb2_grpc as mpb_grpc
from openai_bridge.app import create_app
from openai_bridge.config import BridgeSettings
from tests.conftest import free_port
from tests.fixtures.servers import running_server

COPY = "smollm2-copy"
CHAT = [{"role": "user", "content": "Say hi."}]


@contextlib.asynccontextmanager
async def serve_bridge(settings: BridgeSettings) -> AsyncIterator[str]:
    """The real app under uvicorn on a free port; its lifespan closes the channels."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="module")
async def fleet(data_dir, tmp_path_factory) -> AsyncIterator[tuple[str, Counter[str], dict]]:
    """Replicas `r1`, `r2` of the built-in model and `copy` serving it as COPY, behind one
    bridge; the counter counts the generations each service admitted."""
    served: Counter[str] = Counter()
    async with contextlib.AsyncExitStack() as stack:
        ports, servers = {}, {}
        for name, settings in (("r1", {}), ("r2", {}), ("copy", {"model_id": COPY})):
            own = tmp_path_factory.mktemp(f"scale-{name}")
            server = await stack.enter_async_context(running_server(data_dir, own, **settings))
            ports[name], servers[name] = server.port, server
            engine = server.host.require_engine()
            submit = engine.submit_generation

            def counted(*args, _submit=submit, _name=name, **kwargs):
                served[_name] += 1
                return _submit(*args, **kwargs)

            engine.submit_generation = counted  # type: ignore[method-assign]
        addresses = (
            f"ipv4:127.0.0.1:{ports['r1']},127.0.0.1:{ports['r2']}; 127.0.0.1:{ports['copy']}"
        )
        settings = BridgeSettings(inference_addresses=addresses, api_key="", request_timeout_s=30)
        base = await stack.enter_async_context(serve_bridge(settings))
        yield base, served, servers


@pytest.fixture
async def sdk(fleet) -> AsyncIterator[openai.AsyncOpenAI]:
    base, *_ = fleet
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0) as client:
        yield client


async def test_models_lists_every_service(sdk):
    listed = await sdk.models.list()
    assert sorted(m.id for m in listed.data) == sorted([BUILTIN_MODEL_ID, COPY])
    assert (await sdk.models.retrieve(COPY)).id == COPY


async def test_replicas_of_one_model_share_its_requests(fleet, sdk):
    _, served, _ = fleet
    before = served.copy()
    for _ in range(8):
        reply = await sdk.chat.completions.create(
            model=BUILTIN_MODEL_ID, messages=CHAT, max_tokens=2, temperature=0
        )
        assert reply.model == BUILTIN_MODEL_ID
    delta = served - before
    # round_robin may start on either replica and skips one still connecting; both serve.
    assert delta["r1"] > 0 and delta["r2"] > 0, delta
    assert delta["r1"] + delta["r2"] == 8
    assert delta["copy"] == 0


async def test_every_openai_route_follows_the_model(fleet, sdk):
    _, served, _ = fleet
    before = served.copy()
    chat = await sdk.chat.completions.create(model=COPY, messages=CHAT, max_tokens=2)
    text = await sdk.completions.create(model=COPY, prompt="The sea is", max_tokens=2)
    response = await sdk.responses.create(model=COPY, input="Say hi.", max_output_tokens=2)
    embedded = await sdk.embeddings.create(model=COPY, input="the sea")
    # Each answer names the model the service that produced it serves.
    assert [chat.model, text.model, response.model, embedded.model] == [COPY] * 4
    assert (served - before) == Counter({"copy": 3})


async def test_management_calls_to_replicas_stick_to_one(fleet):
    """Generations spread over the replicas, but an operation, a run or an attachment
    lives in one replica's memory: management calls to their entry reach one replica."""
    base, _, servers = fleet
    default_top_k = servers["r1"].monitor.config.top_k
    assert default_top_k == servers["r2"].monitor.config.top_k
    async with httpx.AsyncClient(base_url=base) as http:
        for top_k in (11, 12, 13, 14):
            answer = await http.put("/api/v1/monitoring/config", json={"top_k": top_k})
            assert answer.status_code == 200, answer.text
    # pick_first: whichever replica connected first, the same one every time.
    seen = sorted(servers[name].monitor.config.top_k for name in ("r1", "r2"))
    assert seen == sorted([14, default_top_k])


async def test_the_standard_health_watch_streams_the_status(fleet):
    """What gRPC's client-side health checking calls on every replica."""
    *_, servers = fleet
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['r1'].port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="millm.v1.InferenceService")
        )
        first = await asyncio.wait_for(watch.read(), 5)
        watch.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_replica_without_a_ready_model_gets_no_generations(fleet, sdk):
    """Its standard gRPC health check says NOT_SERVING, and round_robin skips it. The
    model is unloaded on the replica itself, over its own gRPC port (docs/scale-out.md)."""
    _, served, servers = fleet
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['r2'].port}") as channel:
        await mpb_grpc.ModelServiceStub(channel).UnloadModel(mpb.UnloadModelRequest())
    await asyncio.sleep(0.5)  # the health check's stream carries the change to the bridge
    before = served.copy()
    for _ in range(4):
        await sdk.chat.completions.create(model=BUILTIN_MODEL_ID, messages=CHAT, max_tokens=2)
    assert (served - before) == Counter({"r1": 4})


async def test_a_model_no_service_serves_is_model_not_found(fleet):
    base, *_ = fleet
    async with httpx.AsyncClient(base_url=base) as http:
        answer = await http.post(
            "/v1/chat/completions", json={"model": "gpt-4o", "messages": CHAT, "max_tokens": 2}
        )
    assert answer.status_code == 404
    assert answer.json() == {
        "error": {
            "message": "The model `gpt-4o` does not exist or is not being served; served "
            f"here: `{BUILTIN_MODEL_ID}`, `{COPY}`.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


async def test_a_profile_in_the_model_id_goes_to_that_models_service(sdk):
    with pytest.raises(openai.NotFoundError) as raised:
        await sdk.chat.completions.create(model=f"{COPY}:yelling", messages=CHAT, max_tokens=2)
    assert raised.value.body["code"] == "profile_not_found"
    assert raised.value.body["param"] == "model"


async def test_management_header_chooses_the_service(fleet, sdk):
    """Last in the module: it unloads the COPY service's model."""
    base, *_ = fleet
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        out_of_range = await http.get("/api/v1/steering", headers={"X-Millm-Service": "2"})
        unknown = await http.get("/api/v1/steering", headers={"X-Millm-Service": "nope"})
        unloaded = await http.post("/api/v1/models/unload", headers={"X-Millm-Service": COPY})
    assert out_of_range.status_code == 400
    assert out_of_range.json()["error"]["param"] == "X-Millm-Service"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert unloaded.status_code == 200, unloaded.text
    # The default service still serves; the bridge notices that COPY is gone.
    assert [m.id for m in (await sdk.models.list()).data] == [BUILTIN_MODEL_ID]
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(model=COPY, messages=CHAT, max_tokens=2)
    reply = await sdk.chat.completions.create(model=BUILTIN_MODEL_ID, messages=CHAT, max_tokens=2)
    assert reply.model == BUILTIN_MODEL_ID
