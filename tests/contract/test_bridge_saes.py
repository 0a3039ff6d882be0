"""The SAE API end to end: a scripted SaeService + OperationsService on a real grpc.aio
server (with the real ErrorInterceptor), the real gRPC clients and app, served by real
uvicorn, driven over real HTTP and a real WebSocket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect

from inference_service import errors as domain
from inference_service.interceptors import ErrorInterceptor
from millm.v1 import operation_pb2 as opb
from millm.v1 import operations_service_pb2 as ospb
from millm.v1 import operations_service_pb2_grpc as ospb_grpc
from millm.v1 import sae_pb2 as spb
from millm.v1 import sae_service_pb2 as sspb
from millm.v1 import sae_service_pb2_grpc as sspb_grpc
from tests.contract.test_bridge_management import read_until_closed, serve_bridge

GPT2_RES = "jbloom/GPT2-Small-SAEs-Reformatted"
TOKEN = "hf_do_not_log_me"
MODEL_WARNING = "The SAE was trained on 'SmolLM2-135M' and the loaded model is 'builtin'."
# Three chunks, the middle one larger than a socket buffer, so the body really streams.
ARCHIVE = [b"PK\x03\x04first", bytes(range(256)) * 1024, b"PK\x05\x06last"]


def hub_sae() -> spb.Sae:
    """Attached, TopK, on layer 0: a zero layer must stay 0, not become null."""
    return spb.Sae(
        id="sae-hub",
        name=f"{GPT2_RES}/blocks.0.hook_resid_pre",
        source=spb.SaeSource(
            hub=spb.HubSaeSource(
                repo_id=GPT2_RES, path="blocks.0.hook_resid_pre", commit_sha="c0ffee"
            )
        ),
        format=spb.SAE_FORMAT_SAELENS,
        architecture="topk",
        d_in=576,
        d_sae=4608,
        hook_name="blocks.0.hook_resid_pre",
        layer=0,
        k=32,
        model_name="SmolLM2-135M",
        size_bytes=10_616_832,
        state=spb.SAE_STATE_READY,
        weights_sha256="ab" * 32,
        attached_hook_name="blocks.0.hook_resid_pre",
        dtype="float32",
        created_at_unix_ms=1_700_000_000_000,
        has_feature_statistics=True,
    )


def local_sae() -> spb.Sae:
    """Imported, with no hook, layer or k in its files."""
    return spb.Sae(
        id="sae-local",
        name="my-sae",
        source=spb.SaeSource(local=spb.LocalSaeSource(folder_name="my-sae")),
        format=spb.SAE_FORMAT_MISTUDIO,
        architecture="standard",
        d_in=768,
        d_sae=24576,
        size_bytes=75_000_000,
        state=spb.SAE_STATE_READY,
        weights_sha256="cd" * 32,
        dtype="float32",
        created_at_unix_ms=1_700_000_001_000,
    )


def sae_operation(kind: int, target: str) -> opb.Operation:
    return opb.Operation(
        id="op-sae",
        kind=kind,
        state=opb.OPERATION_STATE_PENDING,
        target=target,
        created_at_unix_ms=1_700_000_000_000,
        updated_at_unix_ms=1_700_000_000_000,
    )


def attachment() -> spb.SaeAttachment:
    return spb.SaeAttachment(
        sae_id="sae-hub",
        hook_name="blocks.0.hook_resid_pre",
        module_name="model.layers.0:input",
        layer=0,
        sae_bytes=10_616_832,
        device="cpu",
        attached_at_unix_ms=1_700_000_002_000,
        dtype="float32",
    )


class ScriptedSaes(sspb_grpc.SaeServiceServicer, ospb_grpc.OperationsServiceServicer):
    """A model with 30 layers of width 576; two cached SAEs, `sae-hub` attached.

    Every request is recorded in `requests`; the export sends `ARCHIVE`, then
    raises `export_error` or waits at `hang_export` when those are set.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.saes = {"sae-hub": hub_sae(), "sae-local": local_sae()}
        self.attached: spb.SaeAttachment | None = attachment()
        self.operation = sae_operation(opb.OPERATION_KIND_SAE_DOWNLOAD, "sae-new")
        self.requests: list = []
        self.export_error: BaseException | None = None
        self.hang_export = False
        self.export_cancelled = asyncio.Event()

    def _sae(self, id_: str) -> spb.Sae:
        if id_ not in self.saes:
            raise domain.NotFoundError(f"No cached SAE `{id_}`.", param="id")
        return self.saes[id_]

    def _check(self, id_: str, hook_name: str) -> spb.SaeCompatibility:
        sae = self._sae(id_)
        hook = hook_name or sae.hook_name
        layer = int(hook.split(".")[1])
        if layer >= 30:
            raise domain.LayerOutOfRangeError(
                f"Layer {layer} does not exist. Model has 30 layers (0-29).", param="hook_name"
            )
        if sae.d_in != 576:
            raise domain.IncompatibleSaeError(
                f"The SAE reads vectors of width {sae.d_in}, but the model's hidden size at "
                f"{hook} is 576.",
                param="id",
            )
        return spb.SaeCompatibility(
            compatible=True,
            warnings=[
                spb.CompatibilityIssue(
                    reason="INCOMPATIBLE_SAE",
                    message=MODEL_WARNING,
                )
            ],
            hook_name=hook,
            module_name=f"model.layers.{layer}:input",
            model_d_model=576,
            model_num_layers=30,
            sae_bytes=sae.size_bytes,
            available_bytes=8_000_000_000,
            model_name="builtin",
        )

    # SaeService

    async def PreviewSaeRepo(self, request, context):
        self.requests.append(request)
        if request.repo_id.count("/") != 1:
            raise domain.InvalidArgumentError(
                "`repo_id` must look like 'owner/name'.", param="repo_id"
            )
        return sspb.PreviewSaeRepoResponse(
            commit_sha="c0ffee",
            candidates=[
                spb.SaeCandidate(
                    path="blocks.0.hook_resid_pre",
                    format=spb.SAE_FORMAT_SAELENS,
                    architecture="standard",
                    d_in=768,
                    d_sae=24576,
                    hook_name="blocks.0.hook_resid_pre",
                    layer=0,
                    model_name="gpt2-small",
                    size_bytes=75_000_000,
                ),
                spb.SaeCandidate(path="broken", size_bytes=5, problem="cfg.json is not JSON."),
            ],
        )

    async def ListSaeReleases(self, request, context):
        self.requests.append(request)
        return sspb.ListSaeReleasesResponse(
            releases=[
                spb.SaeRelease(
                    name="gpt2-small-res-jb",
                    repo_id=GPT2_RES,
                    model="gpt2-small",
                    sae_ids=["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"],
                    supported=True,
                )
            ],
            next_page_token="1",
        )

    async def DownloadSae(self, request, context):
        self.requests.append(request)
        return sspb.DownloadSaeResponse(operation=self.operation)

    async def ImportSae(self, request, context):
        self.requests.append(request)
        return sspb.ImportSaeResponse(sae=self.saes["sae-local"])

    async def ListSaes(self, request, context):
        self.requests.append(request)
        return sspb.ListSaesResponse(saes=list(self.saes.values()), next_page_token="")

    async def GetSae(self, request, context):
        self.requests.append(request)
        return sspb.GetSaeResponse(sae=self._sae(request.id))

    async def DeleteSae(self, request, context):
        self.requests.append(request)
        sae = self._sae(request.id)
        if self.attached is not None and self.attached.sae_id == request.id:
            raise domain.SaeInUseError(
                f"`{request.id}` is attached at {self.attached.hook_name}; detach it first."
            )
        del self.saes[request.id]
        return sspb.DeleteSaeResponse(freed_bytes=sae.size_bytes)

    async def GetSaeCacheUsage(self, request, context):
        self.requests.append(request)
        used = sum(s.size_bytes for s in self.saes.values())
        return sspb.GetSaeCacheUsageResponse(
            used_bytes=used, sae_count=len(self.saes), free_bytes=9_000_000_000
        )

    async def CheckSaeCompatibility(self, request, context):
        self.requests.append(request)
        compatibility = self._check(request.id, request.hook_name)
        return sspb.CheckSaeCompatibilityResponse(compatibility=compatibility)

    async def AttachSae(self, request, context):
        self.requests.append(request)
        compatibility = self._check(request.id, request.hook_name)
        if self.attached is not None and not request.replace:
            raise domain.SaeAlreadyAttachedError(
                f"`{self.attached.sae_id}` is already attached; detach it first."
            )
        dtype = request.dtype or "float32"
        replaced, self.attached = (
            self.attached,
            spb.SaeAttachment(
                sae_id=request.id,
                hook_name=compatibility.hook_name,
                module_name=compatibility.module_name,
                layer=int(compatibility.hook_name.split(".")[1]),
                sae_bytes=compatibility.sae_bytes // (1 if dtype == "float32" else 2),
                device="cpu",
                attached_at_unix_ms=1_700_000_003_000,
                dtype=dtype,
            ),
        )
        return sspb.AttachSaeResponse(
            attachment=self.attached, warnings=compatibility.warnings, replaced=replaced
        )

    async def DetachSae(self, request, context):
        self.requests.append(request)
        if self.attached is None:
            raise domain.NotFoundError("No SAE is attached.")
        detached, self.attached = self.attached, None
        return sspb.DetachSaeResponse(
            attachment=detached,
            freed_bytes=detached.sae_bytes,
            rss_before_bytes=5000,
            rss_after_bytes=1000,
        )

    async def ListSaeAttachments(self, request, context):
        self.requests.append(request)
        attachments = [self.attached] if self.attached is not None else []
        restore = spb.SaeRestore(
            state=spb.SAE_RESTORE_STATE_FAILED,
            sae_id="sae-gone",
            hook_name="blocks.3.hook_resid_post",
            message="No SAE has the id 'sae-gone'.",
            reason="NOT_FOUND",
        )
        return sspb.ListSaeAttachmentsResponse(attachments=attachments, restore=restore)

    async def ExportSae(self, request, context):
        self.requests.append(request)
        sae = self._sae(request.id)
        suffix = "mistudio" if request.layout == spb.SAE_LAYOUT_MISTUDIO else "saelens"
        try:
            for i, data in enumerate(ARCHIVE):
                yield sspb.ExportSaeResponse(
                    filename=f"{sae.name.rsplit('/', 1)[-1]}.{suffix}.zip" if i == 0 else "",
                    data=data,
                )
                if self.hang_export:
                    await asyncio.Event().wait()
            if self.export_error is not None:
                raise self.export_error
        except asyncio.CancelledError:
            self.export_cancelled.set()
            raise

    async def UploadSae(self, request, context):
        self.requests.append(request)
        self._sae(request.id)
        return sspb.UploadSaeResponse(
            operation=sae_operation(opb.OPERATION_KIND_SAE_UPLOAD, request.id)
        )

    # OperationsService: the download's operation, watched like any other.

    async def GetOperation(self, request, context):
        return ospb.GetOperationResponse(operation=self.operation)

    async def WatchOperation(self, request, context):
        if request.id != self.operation.id:
            raise domain.NotFoundError(f"No operation `{request.id}`.")
        done = opb.Operation()
        done.CopyFrom(self.operation)
        done.state = opb.OPERATION_STATE_SUCCEEDED
        done.finished_at_unix_ms = 1_700_000_009_000
        for op in (self.operation, done):
            yield ospb.WatchOperationResponse(operation=op)


@pytest.fixture(scope="module")
async def sae_server() -> AsyncIterator[tuple[ScriptedSaes, str]]:
    servicer = ScriptedSaes()
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    sspb_grpc.add_SaeServiceServicer_to_server(servicer, server)
    ospb_grpc.add_OperationsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture
async def bridge(sae_server) -> AsyncIterator[tuple[ScriptedSaes, httpx.AsyncClient, str]]:
    servicer, address = sae_server
    servicer.reset()
    async with (
        serve_bridge(address) as host,
        httpx.AsyncClient(base_url=f"http://{host}/api/v1") as http,
    ):
        yield servicer, http, host


def error(message: str, type_: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# ---------------------------------------------------------------- the cache


async def test_list_and_get_saes_with_null_for_unset_optionals(bridge):
    servicer, http, _ = bridge
    listed = await http.get("/saes", params={"page_size": 10, "page_token": "0"})
    got = await http.get("/saes/sae-local")
    assert servicer.requests[0] == sspb.ListSaesRequest(page_size=10, page_token="0")
    assert [s["id"] for s in listed.json()["data"]] == ["sae-hub", "sae-local"]
    assert listed.json()["next_page_token"] is None
    assert listed.json()["data"][0] == {
        "id": "sae-hub",
        "name": f"{GPT2_RES}/blocks.0.hook_resid_pre",
        "source": {
            "type": "hub",
            "repo_id": GPT2_RES,
            "path": "blocks.0.hook_resid_pre",
            "revision": None,
            "commit_sha": "c0ffee",
        },
        "format": "saelens",
        "architecture": "topk",
        "d_in": 576,
        "d_sae": 4608,
        "hook_name": "blocks.0.hook_resid_pre",
        "layer": 0,
        "k": 32,
        "model_name": "SmolLM2-135M",
        "dtype": "float32",
        "size_bytes": 10_616_832,
        "state": "ready",
        "weights_sha256": "ab" * 32,
        "attached_hook_name": "blocks.0.hook_resid_pre",
        "neuronpedia_id": None,
        "has_feature_statistics": True,
        "created_at_unix_ms": 1_700_000_000_000,
    }
    assert got.status_code == 200
    assert got.json() == {
        "id": "sae-local",
        "name": "my-sae",
        "source": {"type": "local", "folder_name": "my-sae"},
        "format": "mistudio",
        "architecture": "standard",
        "d_in": 768,
        "d_sae": 24576,
        "hook_name": None,
        "layer": None,
        "k": None,
        "model_name": None,
        "dtype": "float32",
        "size_bytes": 75_000_000,
        "state": "ready",
        "weights_sha256": "cd" * 32,
        "attached_hook_name": None,
        "neuronpedia_id": None,
        "has_feature_statistics": False,
        "created_at_unix_ms": 1_700_000_001_000,
    }


async def test_unknown_sae_is_404(bridge):
    _, http, _ = bridge
    for response in (
        await http.get("/saes/sae-nope"),
        await http.delete("/saes/sae-nope"),
        await http.post("/saes/sae-nope/attach"),
        await http.get("/saes/sae-nope/export"),
    ):
        assert response.status_code == 404
        assert response.json() == error(
            "No cached SAE `sae-nope`.", "not_found_error", "id", "not_found"
        )


async def test_cache_and_attachments_routes_are_not_shadowed_by_id(bridge):
    servicer, http, _ = bridge
    cache = await http.get("/saes/cache")
    attachments = await http.get("/saes/attachments")
    assert cache.status_code == 200
    assert cache.json() == {
        "used_bytes": 10_616_832 + 75_000_000,
        "sae_count": 2,
        "free_bytes": 9_000_000_000,
    }
    assert attachments.json() == {
        "data": [
            {
                "sae_id": "sae-hub",
                "hook_name": "blocks.0.hook_resid_pre",
                "module_name": "model.layers.0:input",
                "layer": 0,
                "sae_bytes": 10_616_832,
                "device": "cpu",
                "attached_at_unix_ms": 1_700_000_002_000,
                "dtype": "float32",
            }
        ],
        "next_page_token": None,
        "restore": {
            "state": "failed",
            "sae_id": "sae-gone",
            "hook_name": "blocks.3.hook_resid_post",
            "message": "No SAE has the id 'sae-gone'.",
            "reason": "not_found",
        },
    }
    assert [type(r) for r in servicer.requests] == [
        sspb.GetSaeCacheUsageRequest,
        sspb.ListSaeAttachmentsRequest,
    ]


async def test_delete_attached_sae_is_409_and_detached_one_is_deleted(bridge):
    servicer, http, _ = bridge
    refused = await http.delete("/saes/sae-hub")
    deleted = await http.delete("/saes/sae-local")
    assert refused.status_code == 409
    assert refused.headers["x-should-retry"] == "false"
    assert refused.json() == error(
        "`sae-hub` is attached at blocks.0.hook_resid_pre; detach it first.",
        "conflict_error",
        None,
        "sae_in_use",
    )
    assert deleted.status_code == 200
    assert deleted.json() == {"id": "sae-local", "deleted": True, "freed_bytes": 75_000_000}
    assert "sae-local" not in servicer.saes


async def test_import_answers_201_with_the_sae(bridge):
    servicer, http, _ = bridge
    response = await http.post("/saes/import", json={"path": "/srv/saes/my-sae", "name": "mine"})
    assert response.status_code == 201
    assert response.headers["location"] == "/api/v1/saes/sae-local"
    assert response.json()["id"] == "sae-local"
    assert servicer.requests == [sspb.ImportSaeRequest(path="/srv/saes/my-sae", name="mine")]


# ---------------------------------------------------------------- finding and downloading


async def test_preview_and_releases(bridge):
    servicer, http, _ = bridge
    preview = await http.post("/saes/preview", json={"repo_id": GPT2_RES, "token": TOKEN})
    bad = await http.post("/saes/preview", json={"repo_id": "noslash"})
    releases = await http.get(
        "/sae-releases", params={"model": "gpt2", "page_size": 1, "page_token": "0"}
    )
    assert servicer.requests[0] == sspb.PreviewSaeRepoRequest(repo_id=GPT2_RES, token=TOKEN)
    assert preview.json() == {
        "commit_sha": "c0ffee",
        "candidates": [
            {
                "path": "blocks.0.hook_resid_pre",
                "format": "saelens",
                "architecture": "standard",
                "d_in": 768,
                "d_sae": 24576,
                "hook_name": "blocks.0.hook_resid_pre",
                "layer": 0,
                "k": None,
                "model_name": "gpt2-small",
                "size_bytes": 75_000_000,
                "problem": None,
            },
            {
                "path": "broken",
                "format": None,
                "architecture": None,
                "d_in": None,
                "d_sae": None,
                "hook_name": None,
                "layer": None,
                "k": None,
                "model_name": None,
                "size_bytes": 5,
                "problem": "cfg.json is not JSON.",
            },
        ],
    }
    assert bad.status_code == 400
    assert bad.json() == error(
        "`repo_id` must look like 'owner/name'.",
        "invalid_request_error",
        "repo_id",
        "invalid_value",
    )
    assert servicer.requests[-1] == sspb.ListSaeReleasesRequest(
        model_filter="gpt2", page_size=1, page_token="0"
    )
    assert releases.json() == {
        "data": [
            {
                "name": "gpt2-small-res-jb",
                "repo_id": GPT2_RES,
                "model": "gpt2-small",
                "sae_ids": ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"],
                "supported": True,
                "unsupported_reason": None,
            }
        ],
        "next_page_token": "1",
    }


async def test_download_from_a_release_then_watch_it(bridge, caplog):
    servicer, http, host = bridge
    caplog.set_level(logging.DEBUG)
    response = await http.post(
        "/saes/download",
        json={"release": "gpt2-small-res-jb", "sae_id": "blocks.0.hook_resid_pre", "token": TOKEN},
    )
    assert response.status_code == 202
    assert response.headers["location"] == "/api/v1/operations/op-sae"
    (request,) = servicer.requests
    assert request.WhichOneof("source") == "release"
    assert request == sspb.DownloadSaeRequest(
        release=spb.ReleaseSaeSource(release="gpt2-small-res-jb", sae_id="blocks.0.hook_resid_pre"),
        token=TOKEN,
    )
    assert (response.json()["kind"], response.json()["target"]) == ("sae_download", "sae-new")

    async with connect(f"ws://{host}{response.headers['location']}/watch") as ws:
        frames = await read_until_closed(ws)
    assert ws.close_code == 1000
    assert [f["operation"]["state"] for f in frames] == ["pending", "succeeded"]
    assert {f["operation"]["kind"] for f in frames} == {"sae_download"}
    assert TOKEN not in caplog.text


async def test_download_from_a_hub_folder(bridge):
    servicer, http, _ = bridge
    response = await http.post(
        "/saes/download",
        json={"repo_id": GPT2_RES, "path": "blocks.0.hook_resid_pre", "revision": "v2"},
    )
    assert response.status_code == 202
    assert servicer.requests == [
        sspb.DownloadSaeRequest(
            hub=spb.HubSaeSource(repo_id=GPT2_RES, path="blocks.0.hook_resid_pre", revision="v2")
        )
    ]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"token": TOKEN},
        {"repo_id": GPT2_RES, "release": "gpt2-small-res-jb", "sae_id": "x"},
        {"path": "blocks.0", "sae_id": "x"},
    ],
)
async def test_download_needs_exactly_one_source(bridge, body):
    servicer, http, _ = bridge
    response = await http.post("/saes/download", json=body)
    assert response.status_code == 400
    assert response.json() == error(
        "Name the SAE to download in one way: either `repo_id` (with optional `path` and "
        "`revision`) or `release` and `sae_id`.",
        "invalid_request_error",
        None,
        "invalid_value",
    )
    assert servicer.requests == []


async def test_download_release_needs_its_sae_id(bridge):
    servicer, http, _ = bridge
    response = await http.post("/saes/download", json={"release": "gpt2-small-res-jb"})
    assert response.status_code == 400
    assert response.json() == error(
        "`release` needs the `sae_id` of one SAE in it.",
        "invalid_request_error",
        "sae_id",
        "invalid_value",
    )
    assert servicer.requests == []


# ---------------------------------------------------------------- compatibility, attach, detach


async def test_compatibility_with_and_without_a_body(bridge):
    servicer, http, _ = bridge
    default_site = await http.post("/saes/sae-hub/compatibility")
    other_site = await http.post(
        "/saes/sae-hub/compatibility", json={"hook_name": "blocks.9.hook_resid_post"}
    )
    assert servicer.requests == [
        sspb.CheckSaeCompatibilityRequest(id="sae-hub"),
        sspb.CheckSaeCompatibilityRequest(id="sae-hub", hook_name="blocks.9.hook_resid_post"),
    ]
    assert default_site.json() == {
        "compatible": True,
        "errors": [],
        "warnings": [
            {
                "reason": "incompatible_sae",
                "message": MODEL_WARNING,
            }
        ],
        "hook_name": "blocks.0.hook_resid_pre",
        "module_name": "model.layers.0:input",
        "model_name": "builtin",
        "model_d_model": 576,
        "model_num_layers": 30,
        "sae_bytes": 10_616_832,
        "available_bytes": 8_000_000_000,
    }
    assert other_site.json()["module_name"] == "model.layers.9:input"


async def test_layer_out_of_range_and_incompatible_width_are_400(bridge):
    _, http, _ = bridge
    out_of_range = await http.post(
        "/saes/sae-hub/attach", json={"hook_name": "blocks.40.hook_resid_post"}
    )
    incompatible = await http.post(
        "/saes/sae-local/compatibility", json={"hook_name": "blocks.3.hook_resid_post"}
    )
    assert out_of_range.status_code == 400
    assert out_of_range.json() == error(
        "Layer 40 does not exist. Model has 30 layers (0-29).",
        "invalid_request_error",
        "hook_name",
        "invalid_value",
    )
    assert incompatible.status_code == 400
    assert incompatible.json() == error(
        "The SAE reads vectors of width 768, but the model's hidden size at "
        "blocks.3.hook_resid_post is 576.",
        "invalid_request_error",
        "id",
        "incompatible_sae",
    )


async def test_attach_while_attached_is_409_then_detach_and_attach(bridge):
    servicer, http, _ = bridge
    refused = await http.post("/saes/sae-hub/attach", json={"hook_name": "blocks.2.hook_resid_pre"})
    detached = await http.post("/saes/detach")
    attached = await http.post(
        "/saes/sae-hub/attach", json={"hook_name": "blocks.2.hook_resid_pre"}
    )
    unknown_field = await http.post("/saes/sae-hub/attach", json={"hook": "blocks.2"})
    assert refused.status_code == 409
    assert refused.headers["x-should-retry"] == "false"
    assert refused.json() == error(
        "`sae-hub` is already attached; detach it first.",
        "conflict_error",
        None,
        "sae_already_attached",
    )
    assert detached.json() == {
        "attachment": {
            "sae_id": "sae-hub",
            "hook_name": "blocks.0.hook_resid_pre",
            "module_name": "model.layers.0:input",
            "layer": 0,
            "sae_bytes": 10_616_832,
            "device": "cpu",
            "attached_at_unix_ms": 1_700_000_002_000,
            "dtype": "float32",
        },
        "freed_bytes": 10_616_832,
        "rss_before_bytes": 5000,
        "rss_after_bytes": 1000,
    }
    assert attached.status_code == 200
    assert attached.json() == {
        "attachment": {
            "sae_id": "sae-hub",
            "hook_name": "blocks.2.hook_resid_pre",
            "module_name": "model.layers.2:input",
            "layer": 2,
            "sae_bytes": 10_616_832,
            "device": "cpu",
            "attached_at_unix_ms": 1_700_000_003_000,
            "dtype": "float32",
        },
        "warnings": [
            {
                "reason": "incompatible_sae",
                "message": MODEL_WARNING,
            }
        ],
        "replaced": None,
    }
    assert unknown_field.status_code == 400
    assert unknown_field.json()["error"]["param"] == "hook"
    assert servicer.requests[:3] == [
        sspb.AttachSaeRequest(id="sae-hub", hook_name="blocks.2.hook_resid_pre"),
        sspb.DetachSaeRequest(),
        sspb.AttachSaeRequest(id="sae-hub", hook_name="blocks.2.hook_resid_pre"),
    ]
    assert len(servicer.requests) == 3


async def test_attach_options_pass_through_and_replace_swaps(bridge):
    servicer, http, _ = bridge
    bad_dtype = await http.post("/saes/sae-hub/attach", json={"dtype": "int8"})
    swapped = await http.post(
        "/saes/sae-hub/attach",
        json={
            "hook_name": "blocks.2.hook_resid_pre",
            "dtype": "bfloat16",
            "allow_overcommit": True,
            "replace": True,
        },
    )
    assert bad_dtype.status_code == 400
    assert bad_dtype.json()["error"]["param"] == "dtype"
    assert swapped.status_code == 200
    body = swapped.json()
    assert body["attachment"]["dtype"] == "bfloat16"
    assert body["attachment"]["hook_name"] == "blocks.2.hook_resid_pre"
    assert body["attachment"]["sae_bytes"] == 10_616_832 // 2
    assert body["replaced"]["hook_name"] == "blocks.0.hook_resid_pre"
    assert servicer.requests == [
        sspb.AttachSaeRequest(
            id="sae-hub",
            hook_name="blocks.2.hook_resid_pre",
            dtype="bfloat16",
            allow_overcommit=True,
            replace=True,
        )
    ]


async def test_detach_a_named_site(bridge):
    servicer, http, _ = bridge
    await http.post("/saes/detach", json={"hook_name": "blocks.0.hook_resid_pre"})
    assert servicer.requests == [sspb.DetachSaeRequest(hook_name="blocks.0.hook_resid_pre")]


# ---------------------------------------------------------------- export and upload


async def test_export_streams_every_chunk_as_a_zip_attachment(bridge):
    servicer, http, _ = bridge
    response = await http.get("/saes/sae-hub/export", params={"layout": "mistudio"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == (
        'attachment; filename="blocks.0.hook_resid_pre.mistudio.zip"'
    )
    assert "content-length" not in response.headers  # streamed, not buffered
    assert response.content == b"".join(ARCHIVE)
    assert servicer.requests == [
        sspb.ExportSaeRequest(id="sae-hub", layout=spb.SAE_LAYOUT_MISTUDIO)
    ]


async def test_export_layout_defaults_to_unspecified_and_is_checked(bridge):
    servicer, http, _ = bridge
    default = await http.get("/saes/sae-local/export")
    bad = await http.get("/saes/sae-local/export", params={"layout": "tarball"})
    assert default.headers["content-disposition"] == 'attachment; filename="my-sae.saelens.zip"'
    assert servicer.requests == [sspb.ExportSaeRequest(id="sae-local")]
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "query.layout"


async def test_export_failing_midway_cuts_the_transfer(bridge, caplog):
    servicer, http, _ = bridge
    servicer.export_error = domain.CorruptedFileError("sae_weights.safetensors is truncated.")
    async with http.stream("GET", "/saes/sae-hub/export") as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()
    assert (
        "export of SAE sae-hub failed after it started: sae_weights.safetensors is truncated."
        in caplog.messages
    )


async def test_leaving_an_export_cancels_the_grpc_stream(bridge):
    servicer, http, _ = bridge
    servicer.hang_export = True
    async with http.stream("GET", "/saes/sae-hub/export") as response:
        assert response.status_code == 200
        async for data in response.aiter_raw():
            assert data
            break
    await asyncio.wait_for(servicer.export_cancelled.wait(), timeout=5)


async def test_upload_translates_the_body(bridge, caplog):
    servicer, http, _ = bridge
    caplog.set_level(logging.DEBUG)
    response = await http.post(
        "/saes/sae-hub/upload",
        json={
            "repo_id": "me/my-saes",
            "path_in_repo": "layer-0",
            "layout": "mistudio",
            "token": TOKEN,
            "private": True,
            "commit_message": "Add layer 0",
        },
    )
    assert response.status_code == 202
    assert response.headers["location"] == "/api/v1/operations/op-sae"
    assert (response.json()["kind"], response.json()["target"]) == ("sae_upload", "sae-hub")
    assert servicer.requests == [
        sspb.UploadSaeRequest(
            id="sae-hub",
            repo_id="me/my-saes",
            path_in_repo="layer-0",
            layout=spb.SAE_LAYOUT_MISTUDIO,
            token=TOKEN,
            private=True,
            commit_message="Add layer 0",
        )
    ]
    assert TOKEN not in caplog.text
