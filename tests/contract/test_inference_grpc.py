"""The inference service over real gRPC on a free port, with the built-in model."""

from __future__ import annotations

import asyncio

import grpc
import psutil
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from inference_service.config import InferenceSettings
from inference_service.server import InferenceServer
from millm.v1 import inference_service_pb2 as pb
from millm.v1 import inference_service_pb2_grpc as pb_grpc
from tests.contract.conftest import bridge_for

MiB = 1 << 20
CAPITAL = pb.ChatMessages(
    messages=[pb.ChatMessage(role="user", content="What is the capital of France?")]
)


@pytest.fixture(scope="module")
async def server(data_dir):
    # float32 without quantization: the prefix cache is on only there (prefix_cache.py).
    settings = InferenceSettings(grpc_port=0, data_dir=data_dir, max_queue=4, quantization="none")
    srv = InferenceServer(settings)
    await srv.start()
    # Checked here, before the load finishes: health must not claim SERVING early.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        early = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    srv.health_before_load = early.status
    await srv.wait_until_ready()
    yield srv
    await srv.stop(0)


@pytest.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    raw = dict(error.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def _generate(channel, start: pb.GenerateStart) -> list[pb.GenerateResponse]:
    call = pb_grpc.InferenceServiceStub(channel).Generate(iter([pb.GenerateRequest(start=start)]))
    return [response async for response in call]


async def test_health_is_not_serving_until_loaded_then_serving(server, channel):
    assert server.health_before_load == health_pb2.HealthCheckResponse.NOT_SERVING
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name async for r in call for s in r.list_services_response.service}
    assert {"millm.v1.InferenceService", "millm.v1.EventService", "grpc.health.v1.Health"} <= names


async def test_generate_streams_accepted_deltas_then_finished(channel):
    responses = await _generate(
        channel,
        pb.GenerateStart(chat=CAPITAL, sampling=pb.SamplingParams(temperature=0, max_tokens=20)),
    )
    kinds = [r.WhichOneof("kind") for r in responses]
    assert kinds[0] == "accepted" and kinds[-1] == "finished"
    assert kinds.count("delta") >= 2
    text = "".join(r.delta.text for r in responses if r.HasField("delta"))
    assert "Paris" in text
    finished = responses[-1].finished
    assert finished.finish_reason == pb.FINISH_REASON_STOP
    assert finished.usage.prompt_tokens == responses[0].accepted.prompt_tokens > 0
    assert finished.usage.completion_tokens == sum(len(r.delta.token_ids) for r in responses[1:-1])
    # The same prompt again: all of it but the last token comes from the prefix cache.
    again = await _generate(
        channel,
        pb.GenerateStart(chat=CAPITAL, sampling=pb.SamplingParams(temperature=0, max_tokens=20)),
    )
    assert "".join(r.delta.text for r in again if r.HasField("delta")) == text
    assert again[-1].finished.usage.cached_tokens == finished.usage.prompt_tokens - 1


async def test_cancel_message_stops_generation_within_a_step(channel):
    queue: asyncio.Queue[pb.GenerateRequest | None] = asyncio.Queue()
    start = pb.GenerateStart(
        prompt="Count from one to one thousand:",
        sampling=pb.SamplingParams(temperature=0, max_tokens=400),
    )
    await queue.put(pb.GenerateRequest(start=start))

    async def requests():
        while (item := await queue.get()) is not None:
            yield item

    call = pb_grpc.InferenceServiceStub(channel).Generate(requests())
    deltas = 0
    finished = None
    async for response in call:
        if response.HasField("delta"):
            deltas += 1
            if deltas == 3:
                await queue.put(pb.GenerateRequest(cancel=pb.GenerateCancel()))
        if response.HasField("finished"):
            finished = response.finished
    await queue.put(None)
    assert finished is not None
    assert finished.finish_reason == pb.FINISH_REASON_CANCELLED
    # One more step may already be under way when the cancel arrives.
    assert finished.usage.completion_tokens <= 5


async def test_cancelling_the_call_stops_the_work(server, channel):
    engine = server.host.engine
    start = pb.GenerateStart(
        prompt="Count from one to one thousand:",
        sampling=pb.SamplingParams(temperature=0, max_tokens=400),
    )
    call = pb_grpc.InferenceServiceStub(channel).Generate(iter([pb.GenerateRequest(start=start)]))
    deltas = 0
    async for response in call:
        if response.HasField("delta"):
            deltas += 1
            if deltas == 3:
                call.cancel()
                break
    # The lane frees up: a short request right after completes quickly, and the
    # engine recorded the cancelled one as stopped far below max_tokens.
    for _ in range(100):
        if engine.queue_depth == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.queue_depth == 0
    last = engine.last_finished
    assert last is not None and last.finish_reason == "cancelled"
    assert last.completion_tokens < 10


async def test_invalid_temperature_is_invalid_argument_with_reason(channel):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _generate(
            channel, pb.GenerateStart(chat=CAPITAL, sampling=pb.SamplingParams(temperature=-1))
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = _error_info(caught.value)
    assert (info.reason, info.domain, info.metadata["param"]) == (
        "INVALID_ARGUMENT",
        "millm.v1",
        "temperature",
    )


async def test_unknown_model_is_not_found(channel):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _generate(channel, pb.GenerateStart(model="gpt-9", chat=CAPITAL))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert _error_info(caught.value).reason == "MODEL_NOT_FOUND"


async def test_first_message_must_be_start(channel):
    call = pb_grpc.InferenceServiceStub(channel).Generate(
        iter([pb.GenerateRequest(cancel=pb.GenerateCancel())])
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [r async for r in call]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_full_queue_is_resource_exhausted(server, channel):
    stub = pb_grpc.InferenceServiceStub(channel)
    start = pb.GenerateStart(
        prompt="Tell me a long story.", sampling=pb.SamplingParams(temperature=0, max_tokens=40)
    )

    async def run_one():
        return [r async for r in stub.Generate(iter([pb.GenerateRequest(start=start)]))]

    def counted(outcome: str) -> float:
        labels = {"kind": "generation", "outcome": outcome}
        return server.metrics.registry.get_sample_value("millm_requests_total", labels) or 0.0

    before = {outcome: counted(outcome) for outcome in ("admitted", "queue_full")}
    results = await asyncio.gather(
        *(run_one() for _ in range(server.settings.max_queue + 3)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    completed = [r for r in results if isinstance(r, list)]
    assert len(refused) >= 3
    assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
    assert {_error_info(e).reason for e in refused} == {"QUEUE_FULL"}
    assert all(int(_error_info(e).metadata["retry_after_s"]) >= 1 for e in refused)
    # Nothing admitted is dropped, and the metrics count both outcomes.
    assert len(completed) + len(refused) == len(results)
    assert counted("queue_full") - before["queue_full"] == len(refused)
    assert counted("admitted") - before["admitted"] == len(completed)
    assert all(
        r[-1].finished.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
        for r in completed
    )
    assert all(r[-1].finished.usage.completion_tokens > 0 for r in completed)


async def test_server_info_shows_the_batch(server, channel):
    stub = pb_grpc.InferenceServiceStub(channel)
    start = pb.GenerateStart(
        chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Tell me a story.")]),
        sampling=pb.SamplingParams(temperature=0, max_tokens=24),
    )

    async def run_one():
        return [r async for r in stub.Generate(iter([pb.GenerateRequest(start=start)]))]

    runs = asyncio.gather(*(run_one() for _ in range(3)))
    seen = []
    while not runs.done():
        seen.append((await stub.GetServerInfo(pb.GetServerInfoRequest())).batch)
        await asyncio.sleep(0.05)
    assert all(r[-1].finished.usage.completion_tokens == 24 for r in await runs)
    assert max(b.active_sequences for b in seen) >= 2  # decoded together
    assert max(b.kv_cache_bytes for b in seen) > 0
    after = (await stub.GetServerInfo(pb.GetServerInfoRequest())).batch
    assert after.max_batch_size == server.settings.max_batch_size
    assert after.tokens_per_second > 0 and 0 < after.occupancy <= 1
    assert after.kv_cache_budget_bytes > 0


async def test_embed_and_tokenize_and_server_info(channel):
    stub = pb_grpc.InferenceServiceStub(channel)
    info = await stub.GetServerInfo(pb.GetServerInfoRequest())
    assert info.model_state == pb.MODEL_STATE_READY
    assert (info.model.id, info.model.hidden_size, info.model.num_layers) == (
        "smollm2-135m-instruct",
        576,
        30,
    )
    embedded = await stub.Embed(
        pb.EmbedRequest(inputs=[pb.EmbedInput(text="hello"), pb.EmbedInput(text="world")])
    )
    assert [len(e.values) for e in embedded.embeddings] == [576, 576]
    tokens = await stub.Tokenize(pb.TokenizeRequest(text="Hello world"))
    assert len(tokens.token_ids) == len(tokens.tokens) >= 2


async def test_server_info_and_health_show_memory(server, channel):
    info = await pb_grpc.InferenceServiceStub(channel).GetServerInfo(pb.GetServerInfoRequest())
    memory = info.memory
    total = psutil.virtual_memory().total
    # The server runs in this process: its RSS holds the model's float32 weights (~540 MiB).
    assert 100 * MiB < memory.resident_bytes < total
    assert abs(memory.resident_bytes - psutil.Process().memory_info().rss) < 256 * MiB
    assert 0 < memory.system_available_bytes < total
    assert memory.device == "cpu"
    assert (memory.device_allocated_bytes, memory.device_total_bytes) == (0, 0)

    http, client = bridge_for(f"127.0.0.1:{server.port}")
    async with http:
        health = await http.get("/health")
    await client.close()
    assert health.status_code == 200
    body = health.json()["memory"]
    assert list(body) == [f.name for f in pb.MemoryStatus.DESCRIPTOR.fields]
    assert body["device"] == "cpu" and body["device_allocated_bytes"] == 0
    assert 100 * MiB < body["resident_bytes"] < total
    assert 0 < body["system_available_bytes"] < total
