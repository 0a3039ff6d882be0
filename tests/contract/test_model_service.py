"""ModelService and OperationsService over real gRPC, downloading from the local Hub."""

from __future__ import annotations

import asyncio
import os
import shutil

import grpc
import pytest

from inference_service.config import InferenceSettings
from inference_service.host import ModelState
from inference_service.server import InferenceServer
from millm.v1 import inference_service_pb2 as ipb
from millm.v1 import inference_service_pb2_grpc as ipb_grpc
from millm.v1 import model_service_pb2 as pb
from millm.v1 import model_service_pb2_grpc as pb_grpc
from millm.v1 import operation_pb2
from millm.v1 import operations_service_pb2 as opb
from millm.v1 import operations_service_pb2_grpc as opb_grpc
from tests.fixtures.local_hub import LocalHub, build_model_repo_files

SMALL = {"config.json": b'{"model_type": "llama"}', "model.safetensors": os.urandom(200_000)}


@pytest.fixture(scope="module")
def hub(data_dir):
    converted = next((data_dir / "models" / "converted").glob("*/config.json")).parent
    with LocalHub() as running:
        running.add_repo("acme/small", SMALL)
        running.add_repo("HuggingFaceTB/SmolLM2-135M-Instruct", build_model_repo_files(converted))
        yield running


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def server(request, data_dir, hub, tmp_path_factory):
    own = tmp_path_factory.mktemp("model-service")
    # The built-in model's converted copy is shared so it is not converted again.
    shutil.copytree(data_dir / "models" / "converted", own / "models" / "converted")
    database_url = ""
    if request.param == "postgresql":
        database_url = request.getfixturevalue("postgres_server").create_database()
    settings = InferenceSettings(
        grpc_port=0, data_dir=own, hf_endpoint=hub.url, database_url=database_url
    )
    srv = InferenceServer(settings)
    await srv.start()
    await srv.wait_until_ready()
    yield srv
    await srv.stop(0)


@pytest.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


async def _watch(channel, operation_id: str) -> list[operation_pb2.Operation]:
    stub = opb_grpc.OperationsServiceStub(channel)
    return [
        r.operation async for r in stub.WatchOperation(opb.WatchOperationRequest(id=operation_id))
    ]


async def test_builtin_model_is_listed_and_loaded(channel):
    listed = await pb_grpc.ModelServiceStub(channel).ListModels(pb.ListModelsRequest())
    builtin = next(m for m in listed.models if m.id == "builtin")
    assert builtin.loaded and builtin.state == pb.CACHED_MODEL_STATE_READY


async def test_download_streams_snapshots_to_success_and_lists_the_model(channel, hub):
    started = await pb_grpc.ModelServiceStub(channel).DownloadModel(
        pb.DownloadModelRequest(repo_id="acme/small")
    )
    snapshots = await _watch(channel, started.operation.id)
    assert snapshots[-1].state == operation_pb2.OPERATION_STATE_SUCCEEDED
    done = [s.bytes_done for s in snapshots]
    assert done == sorted(done)
    assert (
        snapshots[-1].bytes_done == snapshots[-1].bytes_total == sum(len(v) for v in SMALL.values())
    )
    model = (
        await pb_grpc.ModelServiceStub(channel).GetModel(pb.GetModelRequest(id="acme/small@main"))
    ).model
    assert model.state == pb.CACHED_MODEL_STATE_READY
    assert model.commit_sha == hub.commit("acme/small")
    assert model.format == pb.WEIGHT_FORMAT_SAFETENSORS
    # A finished operation can be re-read and re-watched later (a reloaded page).
    again = await _watch(channel, started.operation.id)
    assert again == [snapshots[-1]]


async def test_failed_and_cancelled_downloads(channel, hub):
    stub = pb_grpc.ModelServiceStub(channel)
    missing = await stub.DownloadModel(
        pb.DownloadModelRequest(repo_id="acme/missing", token="hf_x")
    )
    final = (await _watch(channel, missing.operation.id))[-1]
    assert final.state == operation_pb2.OPERATION_STATE_FAILED
    assert final.error_reason == "NOT_FOUND" and "acme/missing" in final.error_message

    hub.add_repo("acme/slow", {"config.json": b"{}", "model.safetensors": os.urandom(400_000)})
    hub.slow("model.safetensors", 100_000, repo_id="acme/slow")
    slow = await stub.DownloadModel(pb.DownloadModelRequest(repo_id="acme/slow"))
    await asyncio.sleep(0.5)
    await opb_grpc.OperationsServiceStub(channel).CancelOperation(
        opb.CancelOperationRequest(id=slow.operation.id)
    )
    final = (await _watch(channel, slow.operation.id))[-1]
    assert final.state == operation_pb2.OPERATION_STATE_CANCELLED
    assert 0 < final.bytes_done < final.bytes_total
    hub.reset_faults()

    listed = await opb_grpc.OperationsServiceStub(channel).ListOperations(
        opb.ListOperationsRequest(page_size=2)
    )
    assert len(listed.operations) == 2 and listed.next_page_token


async def test_bad_requests(channel):
    stub = pb_grpc.ModelServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DownloadModel(pb.DownloadModelRequest(repo_id="no-slash"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # was a KeyError: a 500
        await stub.DownloadModel(
            pb.DownloadModelRequest(repo_id="acme/small", format=pb.WEIGHT_FORMAT_GGUF)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "safetensors or pytorch" in caught.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetModel(pb.GetModelRequest(id="acme/none@main"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await opb_grpc.OperationsServiceStub(channel).GetOperation(
            opb.GetOperationRequest(id="nope")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_download_load_serve_delete_cycle(channel, server):
    models = pb_grpc.ModelServiceStub(channel)
    repo = "HuggingFaceTB/SmolLM2-135M-Instruct"
    started = await models.DownloadModel(pb.DownloadModelRequest(repo_id=repo))
    assert (await _watch(channel, started.operation.id))[
        -1
    ].state == operation_pb2.OPERATION_STATE_SUCCEEDED
    model_id = f"{repo}@main"

    loaded = await models.LoadModel(pb.LoadModelRequest(id=model_id))
    assert loaded.model.loaded and loaded.load_s > 0
    info = await ipb_grpc.InferenceServiceStub(channel).GetServerInfo(ipb.GetServerInfoRequest())
    assert info.model.id == "smollm2-135m-instruct" and info.model.source == "local"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await models.DeleteModel(pb.DeleteModelRequest(id=model_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    unloaded = await models.UnloadModel(pb.UnloadModelRequest())
    assert unloaded.rss_after_bytes < unloaded.rss_before_bytes
    bare = await ipb_grpc.InferenceServiceStub(channel).GetServerInfo(ipb.GetServerInfoRequest())
    assert bare.memory.device == "" and bare.memory.resident_bytes > 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ipb_grpc.InferenceServiceStub(channel).Tokenize(ipb.TokenizeRequest(text="hi"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    freed = await models.DeleteModel(pb.DeleteModelRequest(id=model_id))
    assert freed.freed_bytes > 500_000_000
    await models.LoadModel(pb.LoadModelRequest(id="builtin"))
    assert server.host.engine.description.id == "smollm2-135m-instruct"


async def test_estimate_and_quantized_load_of_the_builtin_model(channel):
    models = pb_grpc.ModelServiceStub(channel)
    f32 = await models.EstimateModelMemory(
        pb.EstimateModelMemoryRequest(
            id="builtin",
            spec=pb.LoadSpec(
                dtype="float32", quantization=pb.QUANTIZATION_NONE, context_tokens=512
            ),
        )
    )
    bf16 = await models.EstimateModelMemory(
        pb.EstimateModelMemoryRequest(
            id="builtin",
            spec=pb.LoadSpec(
                dtype="bfloat16", quantization=pb.QUANTIZATION_NONE, context_tokens=512
            ),
        )
    )
    assert f32.weights_bytes == 2 * bf16.weights_bytes
    assert (
        f32.fits and f32.total_bytes == f32.weights_bytes + f32.kv_cache_bytes + f32.overhead_bytes
    )

    loaded = await models.LoadModel(
        pb.LoadModelRequest(
            id="builtin", spec=pb.LoadSpec(quantization=pb.QUANTIZATION_INT8_DYNAMIC)
        )
    )
    assert loaded.model.loaded
    reply = [
        r
        async for r in ipb_grpc.InferenceServiceStub(channel).Generate(
            iter(
                [
                    ipb.GenerateRequest(
                        start=ipb.GenerateStart(
                            chat=ipb.ChatMessages(
                                messages=[
                                    ipb.ChatMessage(
                                        role="user", content="What is the capital of France?"
                                    )
                                ]
                            ),
                            sampling=ipb.SamplingParams(temperature=0, max_tokens=12),
                        )
                    )
                ]
            )
        )
    ]
    assert "Paris" in "".join(r.delta.text for r in reply if r.HasField("delta"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await models.LoadModel(pb.LoadModelRequest(id="builtin", spec=pb.LoadSpec(dtype="float64")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await models.LoadModel(pb.LoadModelRequest(id="builtin"))


async def test_files_removed_by_hand_show_as_missing(channel, server, hub):
    stub = pb_grpc.ModelServiceStub(channel)
    hub.add_repo("acme/removed", SMALL)
    started = await stub.DownloadModel(pb.DownloadModelRequest(repo_id="acme/removed"))
    assert (await _watch(channel, started.operation.id))[
        -1
    ].state == operation_pb2.OPERATION_STATE_SUCCEEDED
    shutil.rmtree(server.catalog.get("acme/removed@main").local_dir)
    listed = await stub.ListModels(pb.ListModelsRequest())
    assert {m.id: m.state for m in listed.models}[
        "acme/removed@main"
    ] == pb.CACHED_MODEL_STATE_MISSING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.LoadModel(pb.LoadModelRequest(id="acme/removed@main"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_switch_under_load_completes_or_refuses_cleanly(channel, server):
    inference = ipb_grpc.InferenceServiceStub(channel)
    start = ipb.GenerateStart(
        prompt="Once upon a time", sampling=ipb.SamplingParams(temperature=0, max_tokens=12)
    )

    async def generate() -> str:
        try:
            responses = [
                r async for r in inference.Generate(iter([ipb.GenerateRequest(start=start)]))
            ]
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return "unavailable"
        finished = responses[-1].finished
        if finished.finish_reason == ipb.FINISH_REASON_CANCELLED:
            return "cancelled"  # the switch's drain period ran out: a clean end too
        assert finished.usage.completion_tokens > 0
        return "completed"

    before = [asyncio.create_task(generate()) for _ in range(3)]
    await asyncio.sleep(0.3)
    models = pb_grpc.ModelServiceStub(channel)

    async def load_builtin() -> pb.LoadModelResponse:
        return await models.LoadModel(pb.LoadModelRequest(id="builtin"))

    switch = asyncio.create_task(load_builtin())
    while server.host.state is not ModelState.LOADING:  # noqa: ASYNC110 - a test poll
        await asyncio.sleep(0.01)
    during = [asyncio.create_task(generate()) for _ in range(3)]
    await switch
    outcomes = await asyncio.gather(*before, *during)
    # Requests admitted before the switch finish (or are cancelled cleanly if the
    # drain period runs out); those arriving during it get UNAVAILABLE (HTTP 503).
    assert set(outcomes[:3]) <= {"completed", "cancelled"} and outcomes[0] == "completed"
    assert set(outcomes[3:]) == {"unavailable"}
    after = await generate()
    assert after == "completed"
