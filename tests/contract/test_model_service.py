"""ModelService and OperationsService over real gRPC, downloading from the local Hub."""

from __future__ import annotations

import asyncio
import os
import shutil

import grpc
import pytest

from inference_service.config import InferenceSettings
from inference_service.server import InferenceServer
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


@pytest.fixture(scope="module")
async def server(data_dir, hub, tmp_path_factory):
    own = tmp_path_factory.mktemp("model-service")
    # The built-in model's converted copy is shared so it is not converted again.
    shutil.copytree(data_dir / "models" / "converted", own / "models" / "converted")
    settings = InferenceSettings(grpc_port=0, data_dir=own, hf_endpoint=hub.url)
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
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetModel(pb.GetModelRequest(id="acme/none@main"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await opb_grpc.OperationsServiceStub(channel).GetOperation(
            opb.GetOperationRequest(id="nope")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
