"""The management API end to end: a scripted ModelService + OperationsService on a real
grpc.aio server (with the real ErrorInterceptor), the real gRPC clients and app, served
by real uvicorn, driven over real HTTP and a real WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from inference_service import errors as domain
from inference_service.interceptors import ErrorInterceptor
from millm.v1 import model_service_pb2 as mpb
from millm.v1 import model_service_pb2_grpc as mpb_grpc
from millm.v1 import operation_pb2 as opb
from millm.v1 import operations_service_pb2 as ospb
from millm.v1 import operations_service_pb2_grpc as ospb_grpc
from openai_bridge.app import create_app
from openai_bridge.config import BridgeSettings
from tests.conftest import free_port

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def snapshot(state: int, done: int, **fields) -> opb.Operation:
    return opb.Operation(
        id="op-1",
        kind=opb.OPERATION_KIND_MODEL_DOWNLOAD,
        state=state,
        stage=fields.pop("stage", "downloading"),
        target=SMOL,
        bytes_done=done,
        bytes_total=4000,
        created_at_unix_ms=1_700_000_000_000,
        updated_at_unix_ms=1_700_000_000_000 + done,
        **fields,
    )


class ScriptedManagement(mpb_grpc.ModelServiceServicer, ospb_grpc.OperationsServiceServicer):
    """A cache with the built-in model (loaded) and SmolLM2; one download operation, op-1."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.models = {
            "builtin": mpb.CachedModel(
                id="builtin",
                format=mpb.WEIGHT_FORMAT_GGUF,
                size_bytes=100,
                loaded=True,
                state=mpb.CACHED_MODEL_STATE_READY,
            ),
            SMOL: mpb.CachedModel(
                id=SMOL,
                repo_id=SMOL,
                revision="main",
                format=mpb.WEIGHT_FORMAT_SAFETENSORS,
                size_bytes=4000,
                state=mpb.CACHED_MODEL_STATE_READY,
            ),
        }
        self.snapshots = [
            snapshot(opb.OPERATION_STATE_PENDING, 0, stage="resolving"),
            snapshot(opb.OPERATION_STATE_RUNNING, 2000, eta_s=0.5, bytes_per_s=4000.0),
            snapshot(
                opb.OPERATION_STATE_SUCCEEDED,
                4000,
                stage="done",
                finished_at_unix_ms=1_700_000_005_000,
            ),
        ]
        self.operation = self.snapshots[0]
        self.hang_watch = False
        self.watch_cancelled = asyncio.Event()
        self.requests: list = []

    # ModelService

    async def ListModels(self, request, context):
        self.requests.append(request)
        return mpb.ListModelsResponse(models=list(self.models.values()), next_page_token="")

    async def GetModel(self, request, context):
        if request.id not in self.models:
            raise domain.ModelNotFoundError(f"No cached model `{request.id}`.", param="id")
        return mpb.GetModelResponse(model=self.models[request.id])

    async def DownloadModel(self, request, context):
        self.requests.append(request)
        return mpb.DownloadModelResponse(operation=self.operation)

    async def EstimateModelMemory(self, request, context):
        self.requests.append(request)
        return mpb.EstimateModelMemoryResponse(
            weights_bytes=4000, sae_bytes=request.sae_bytes, total_bytes=4007, device="cuda"
        )

    async def LoadModel(self, request, context):
        model = mpb.CachedModel()
        model.CopyFrom(self.models[request.id])
        model.loaded = True
        warning = "Overcommitted." if request.allow_overcommit else ""
        return mpb.LoadModelResponse(model=model, load_s=0.1, warning=warning)

    async def UnloadModel(self, request, context):
        return mpb.UnloadModelResponse(rss_before_bytes=5000, rss_after_bytes=1000)

    async def DeleteModel(self, request, context):
        model = self.models.get(request.id)
        if model is None:
            raise domain.ModelNotFoundError(f"No cached model `{request.id}`.", param="id")
        if model.loaded:
            raise domain.ModelInUseError(f"`{request.id}` is being served; unload it first.")
        del self.models[request.id]
        return mpb.DeleteModelResponse(freed_bytes=model.size_bytes)

    # OperationsService

    def _operation(self, id_: str) -> opb.Operation:
        if id_ != self.operation.id:
            raise domain.NotFoundError(f"No operation `{id_}`.")
        return self.operation

    async def GetOperation(self, request, context):
        return ospb.GetOperationResponse(operation=self._operation(request.id))

    async def ListOperations(self, request, context):
        return ospb.ListOperationsResponse(operations=[self.operation])

    async def CancelOperation(self, request, context):
        cancelled = opb.Operation()
        cancelled.CopyFrom(self._operation(request.id))
        cancelled.state = opb.OPERATION_STATE_CANCELLED
        self.operation = cancelled
        return ospb.CancelOperationResponse(operation=cancelled)

    async def WatchOperation(self, request, context):
        self._operation(request.id)
        try:
            for op in self.snapshots:
                self.operation = op
                yield ospb.WatchOperationResponse(operation=op)
                if self.hang_watch:
                    await asyncio.Event().wait()
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.watch_cancelled.set()
            raise


@pytest.fixture(scope="module")
async def management_server() -> AsyncIterator[tuple[ScriptedManagement, str]]:
    servicer = ScriptedManagement()
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    mpb_grpc.add_ModelServiceServicer_to_server(servicer, server)
    ospb_grpc.add_OperationsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


@contextlib.asynccontextmanager
async def serve_bridge(address: str, api_key: str = "") -> AsyncIterator[str]:
    """The real app with the real gRPC clients, under uvicorn on a free port."""
    settings = BridgeSettings(inference_address=address, api_key=api_key, request_timeout_s=2)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def bridge(management_server) -> AsyncIterator[tuple[ScriptedManagement, str]]:
    servicer, address = management_server
    servicer.reset()
    async with serve_bridge(address) as host:
        yield servicer, host


async def read_until_closed(ws) -> list[dict]:
    frames = []
    async for text in ws:  # ends when the server closes with 1000; raises otherwise
        frames.append(json.loads(text))
    return frames


async def test_list_and_get_models(bridge):
    _, host = bridge
    async with httpx.AsyncClient(base_url=f"http://{host}") as http:
        listed = (await http.get("/api/v1/models", params={"page_size": 10})).json()
        got = (await http.get(f"/api/v1/models/{SMOL}")).json()
        missing = await http.get("/api/v1/models/org/missing")
    assert [m["id"] for m in listed["data"]] == ["builtin", SMOL]
    assert listed["next_page_token"] is None
    assert got == {
        "id": SMOL,
        "repo_id": SMOL,
        "revision": "main",
        "commit_sha": None,
        "format": "safetensors",
        "parameter_count": None,
        "size_bytes": 4000,
        "state": "ready",
        "loaded": False,
    }
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "No cached model `org/missing`.",
            "type": "invalid_request_error",
            "param": "id",
            "code": "model_not_found",
        }
    }


async def test_download_then_watch_to_completion(bridge):
    servicer, host = bridge
    async with httpx.AsyncClient(base_url=f"http://{host}") as http:
        response = await http.post(
            "/api/v1/models/download", json={"repo_id": SMOL, "format": "safetensors"}
        )
    assert response.status_code == 202
    assert servicer.requests[-1] == mpb.DownloadModelRequest(
        repo_id=SMOL, format=mpb.WEIGHT_FORMAT_SAFETENSORS
    )
    operation = response.json()
    assert (operation["id"], operation["state"], operation["stage"]) == (
        "op-1",
        "pending",
        "resolving",
    )

    async with connect(f"ws://{host}{response.headers['location']}/watch") as ws:
        frames = await read_until_closed(ws)
    assert ws.close_code == 1000
    assert [f["operation"]["state"] for f in frames] == ["pending", "running", "succeeded"]
    assert [f["operation"]["eta_s"] for f in frames] == [None, 0.5, None]
    assert frames[-1]["operation"]["finished_at_unix_ms"] == 1_700_000_005_000


async def test_watch_unknown_operation_is_an_error_frame_and_1008(bridge):
    _, host = bridge
    async with connect(f"ws://{host}/api/v1/operations/nope/watch") as ws:
        text = await ws.recv()
        await ws.wait_closed()
    assert ws.close_code == 1008
    assert json.loads(text) == {
        "type": "error",
        "error": {
            "message": "No operation `nope`.",
            "type": "not_found_error",
            "param": None,
            "code": "not_found",
        },
    }


async def test_leaving_the_websocket_cancels_the_grpc_watch(bridge):
    servicer, host = bridge
    servicer.hang_watch = True
    async with connect(f"ws://{host}/api/v1/operations/op-1/watch") as ws:
        assert json.loads(await ws.recv())["operation"]["state"] == "pending"
    await asyncio.wait_for(servicer.watch_cancelled.wait(), timeout=5)


async def test_get_list_and_cancel_operation(bridge):
    _, host = bridge
    async with httpx.AsyncClient(base_url=f"http://{host}") as http:
        got = (await http.get("/api/v1/operations/op-1")).json()
        listed = (await http.get("/api/v1/operations", params={"unfinished_only": True})).json()
        cancelled = (await http.post("/api/v1/operations/op-1/cancel")).json()
        missing = await http.post("/api/v1/operations/nope/cancel")
    assert (got["state"], got["kind"]) == ("pending", "model_download")
    assert [op["id"] for op in listed["data"]] == ["op-1"]
    assert (cancelled["state"], cancelled["done"]) == ("cancelled", True)
    assert missing.status_code == 404


async def test_delete_loaded_model_is_refused_with_409(bridge):
    servicer, host = bridge
    async with httpx.AsyncClient(base_url=f"http://{host}") as http:
        refused = await http.delete("/api/v1/models/builtin")
        deleted = await http.delete(f"/api/v1/models/{SMOL}")
    assert refused.status_code == 409
    assert refused.headers["x-should-retry"] == "false"
    assert refused.json() == {
        "error": {
            "message": "`builtin` is being served; unload it first.",
            "type": "conflict_error",
            "param": None,
            "code": "model_in_use",
        }
    }
    assert deleted.json() == {"id": SMOL, "deleted": True, "freed_bytes": 4000}
    assert SMOL not in servicer.models


async def test_estimate_load_and_unload(bridge):
    servicer, host = bridge
    async with httpx.AsyncClient(base_url=f"http://{host}") as http:
        estimate = await http.post(
            f"/api/v1/models/{SMOL}/estimate",
            json={"quantization": "bnb_4bit", "device": "cuda", "sae_bytes": 7},
        )
        loaded = await http.post(f"/api/v1/models/{SMOL}/load", json={"allow_overcommit": True})
        unloaded = await http.post("/api/v1/models/unload")
    assert estimate.json()["sae_bytes"] == 7 and estimate.json()["fits"] is False
    assert servicer.requests[0] == mpb.EstimateModelMemoryRequest(
        id=SMOL,
        spec=mpb.LoadSpec(quantization=mpb.QUANTIZATION_BNB_4BIT, device="cuda"),
        sae_bytes=7,
    )
    assert loaded.json()["model"]["loaded"] is True
    assert loaded.json()["warning"] == "Overcommitted."
    assert unloaded.json() == {"rss_before_bytes": 5000, "rss_after_bytes": 1000}


async def test_websocket_api_key_as_subprotocol(management_server):
    servicer, address = management_server
    servicer.reset()
    async with serve_bridge(address, api_key="k") as host:
        url = f"ws://{host}/api/v1/operations/op-1/watch"
        with pytest.raises(InvalidStatus) as caught:
            async with connect(url):
                pass
        # base64url("k") is "aw"; only `millm.v1` is selected, never the key.
        async with connect(url, subprotocols=["millm.v1", "millm.key.aw"]) as ws:
            selected = ws.subprotocol
            frames = await read_until_closed(ws)
    assert caught.value.response.status_code == 401
    assert json.loads(caught.value.response.body)["error"]["code"] == "invalid_api_key"
    assert selected == "millm.v1"
    assert frames[-1]["operation"]["state"] == "succeeded"
