"""SaeService over real gRPC with the built-in model, SAEs from the local Hub and from disk."""

from __future__ import annotations

import asyncio
import io
import weakref
import zipfile

import grpc
import numpy as np
import pytest
import torch
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from huggingface_hub import constants as hub_constants

from inference_service.sae import manager
from inference_service.sae.formats import load_sae
from millm.v1 import inference_service_pb2 as ipb
from millm.v1 import inference_service_pb2_grpc as ipb_grpc
from millm.v1 import operation_pb2, sae_pb2, steering_pb2
from millm.v1 import operations_service_pb2 as opb
from millm.v1 import operations_service_pb2_grpc as opb_grpc
from millm.v1 import profile_service_pb2 as ppb
from millm.v1 import profile_service_pb2_grpc as ppb_grpc
from millm.v1 import sae_service_pb2 as pb
from millm.v1 import sae_service_pb2_grpc as pb_grpc
from millm.v1 import steering_service_pb2 as st
from millm.v1 import steering_service_pb2_grpc as st_grpc
from tests.fixtures.local_hub import LocalHub
from tests.fixtures.saes import folder_files, random_sae, write_sae
from tests.fixtures.servers import running_server

SMOL_REPO = "acme/smol-saes"
GPT2_REPO = (
    "jbloom/GPT2-Small-SAEs-Reformatted"  # where the SAELens release gpt2-small-res-jb lives
)
PROMPT = [ipb.ChatMessage(role="user", content="Name three colours.")]


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    root = tmp_path_factory.mktemp("sae-sources")
    return {
        "l9": write_sae(root / "smol-l9", random_sae(seed=1)),
        "topk": write_sae(
            root / "smol-topk",
            random_sae(architecture="topk", k=16, hook_name="blocks.3.hook_resid_pre", seed=2),
        ),
        "wide": write_sae(
            root / "gpt2",
            random_sae(d_in=768, model_name="gpt2-small", hook_name="blocks.0.hook_resid_pre"),
        ),
        "corrupt-me": write_sae(root / "corrupt-me", random_sae(seed=5)),
        "junk": _junk_folder(root / "junk"),
    }


def _junk_folder(folder):
    folder.mkdir()
    (folder / "README.md").write_text("not an SAE")
    return folder


def _in(folder: str, files: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{folder}/{name}": data for name, data in files.items()}


@pytest.fixture(scope="module")
def hub(saes):
    with LocalHub() as running:
        running.add_repo(
            SMOL_REPO,
            {
                **_in("blocks.9.hook_resid_post", folder_files(saes["l9"])),
                **_in("blocks.3.hook_resid_pre", folder_files(saes["topk"])),
                "README.md": b"# two SAEs",
            },
        )
        running.add_repo(GPT2_REPO, _in("blocks.0.hook_resid_pre", folder_files(saes["wide"])))
        running.add_repo("acme/corrupt", _in("l9", folder_files(saes["corrupt-me"])))
        yield running


@pytest.fixture(scope="module")
async def server(data_dir, hub, tmp_path_factory):
    own = tmp_path_factory.mktemp("sae-service")
    # huggingface_hub uploads through Xet when hf_xet is installed; the local Hub speaks
    # plain LFS, and the client reads this flag when it uploads.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
        async with running_server(data_dir, own, hf_endpoint=hub.url) as srv:
            yield srv


@pytest.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel):
    return pb_grpc.SaeServiceStub(channel)


@pytest.fixture(autouse=True)
async def _detach_after(server):
    """A failed test must not leave its SAE attached for the next one."""
    yield
    if server.host.engine is not None and server.saes.attachments.list():
        await server.saes.detach("")


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error) or status_pb2.Status()
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


async def _expect_error(call, code: grpc.StatusCode, reason: str, text: str = "") -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() is code, caught.value.details()
    assert _reason(caught.value) == reason
    assert text in caught.value.details()
    return caught.value.details()


async def _watch(channel, operation_id: str) -> list[operation_pb2.Operation]:
    stub = opb_grpc.OperationsServiceStub(channel)
    request = opb.WatchOperationRequest(id=operation_id)
    return [r.operation async for r in stub.WatchOperation(request)]


async def _download(stub, channel, **source) -> tuple[str, list[operation_pb2.Operation]]:
    started = await stub.DownloadSae(pb.DownloadSaeRequest(**source))
    snapshots = await _watch(channel, started.operation.id)
    return started.operation.target, snapshots


async def _import(stub, folder, name="") -> sae_pb2.Sae:
    return (await stub.ImportSae(pb.ImportSaeRequest(path=str(folder), name=name))).sae


def _layer_hooks(server, layer: int) -> int:
    module = server.host.engine.loaded_model.model.model.layers[layer]
    return len(module._forward_hooks) + len(module._forward_pre_hooks)


async def _logits(server, ids: list[int]) -> torch.Tensor:
    engine = server.host.engine
    model = engine.loaded_model.model

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(torch.tensor([ids])).logits.clone()

    return await engine.call_on_lane(forward)


async def _generate(channel, max_tokens: int = 12, on_first=None) -> tuple[list[int], int]:
    stub = ipb_grpc.InferenceServiceStub(channel)
    start = ipb.GenerateRequest(
        start=ipb.GenerateStart(
            chat=ipb.ChatMessages(messages=PROMPT),
            sampling=ipb.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        )
    )
    ids: list[int] = []
    finish = ipb.FINISH_REASON_UNSPECIFIED

    async def requests():
        yield start

    async for response in stub.Generate(requests()):
        if response.HasField("delta"):
            if not ids and on_first is not None:
                on_first.set()
            ids.extend(response.delta.token_ids)
        elif response.HasField("finished"):
            finish = response.finished.finish_reason
    return ids, finish


# ---- Hub: preview, download, resume, integrity, releases ----------------------------------


async def test_preview_lists_every_sae_with_its_shape(stub, hub):
    found = await stub.PreviewSaeRepo(pb.PreviewSaeRepoRequest(repo_id=SMOL_REPO))
    assert found.commit_sha == hub.commit(SMOL_REPO)
    by_path = {c.path: c for c in found.candidates}
    assert set(by_path) == {"blocks.3.hook_resid_pre", "blocks.9.hook_resid_post"}
    l9, topk = by_path["blocks.9.hook_resid_post"], by_path["blocks.3.hook_resid_pre"]
    assert (l9.d_in, l9.d_sae, l9.architecture, l9.layer) == (576, 256, "standard", 9)
    assert l9.hook_name == "blocks.9.hook_resid_post" and l9.format == sae_pb2.SAE_FORMAT_SAELENS
    assert l9.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (topk.architecture, topk.k, topk.layer) == ("topk", 16, 3)
    files = hub.files(SMOL_REPO)
    assert l9.size_bytes == sum(f.size for path, f in files.items() if path.startswith("blocks.9."))


async def test_preview_and_download_of_unknown_repos_and_paths(stub):
    # The Hub answers an anonymous request for a missing repository as for a private one.
    await _expect_error(
        stub.PreviewSaeRepo(pb.PreviewSaeRepoRequest(repo_id="acme/nothing-here")),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
        "'acme/nothing-here' was not found",
    )
    details = await _expect_error(
        stub.DownloadSae(
            pb.DownloadSaeRequest(hub=sae_pb2.HubSaeSource(repo_id=SMOL_REPO, path="layer_7"))
        ),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        "no SAE at 'layer_7'",
    )
    assert "blocks.3.hook_resid_pre" in details
    await _expect_error(
        stub.DownloadSae(pb.DownloadSaeRequest(hub=sae_pb2.HubSaeSource(repo_id="no-slash"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "owner/name",
    )
    await _expect_error(
        stub.DownloadSae(pb.DownloadSaeRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


async def test_download_reports_progress_and_registers_the_sae(stub, channel, hub):
    hub_source = sae_pb2.HubSaeSource(repo_id=SMOL_REPO, path="blocks.9.hook_resid_post")
    sae_id, snapshots = await _download(stub, channel, hub=hub_source)
    assert snapshots[-1].state == operation_pb2.OPERATION_STATE_SUCCEEDED, snapshots[-1]
    assert snapshots[-1].kind == operation_pb2.OPERATION_KIND_SAE_DOWNLOAD
    done = [s.bytes_done for s in snapshots]
    assert done == sorted(done) and done[-1] == snapshots[-1].bytes_total > 0
    sae = (await stub.GetSae(pb.GetSaeRequest(id=sae_id))).sae
    assert sae.state == sae_pb2.SAE_STATE_READY
    assert sae.source.hub.repo_id == SMOL_REPO and sae.source.hub.commit_sha
    assert (sae.d_in, sae.d_sae, sae.hook_name, sae.layer) == (576, 256, sae.hook_name, 9)
    assert sae.has_feature_statistics
    weights = hub.files(SMOL_REPO)["blocks.9.hook_resid_post/sae_weights.safetensors"]
    assert sae.weights_sha256 == weights.sha256
    # The same SAE asked for again is the same record, not a second copy.
    again, _ = await _download(stub, channel, hub=hub_source)
    assert again == sae_id


async def test_download_resumes_after_a_dropped_connection(stub, channel, hub):
    path = "blocks.3.hook_resid_pre/sae_weights.safetensors"
    size = hub.files(SMOL_REPO)[path].size
    hub.clear_requests()
    hub.drop_after(path, size // 2)
    hub_source = sae_pb2.HubSaeSource(repo_id=SMOL_REPO, path="blocks.3.hook_resid_pre")
    sae_id, snapshots = await _download(stub, channel, hub=hub_source)
    assert snapshots[-1].state == operation_pb2.OPERATION_STATE_SUCCEEDED
    gets = hub.downloads(path)
    assert len(gets) == 2 and gets[1].range and gets[1].range.startswith("bytes=")
    sae = (await stub.GetSae(pb.GetSaeRequest(id=sae_id))).sae
    assert sae.weights_sha256 == hub.files(SMOL_REPO)[path].sha256


async def test_corrupted_download_is_removed_and_marked(stub, channel, hub):
    hub.corrupt("l9/sae_weights.safetensors", repo_id="acme/corrupt")
    try:
        sae_id, snapshots = await _download(
            stub, channel, hub=sae_pb2.HubSaeSource(repo_id="acme/corrupt", path="l9")
        )
    finally:
        hub.reset_faults()
    assert snapshots[-1].state == operation_pb2.OPERATION_STATE_FAILED
    assert snapshots[-1].error_reason == "CORRUPTED_FILE"
    assert "integrity check" in snapshots[-1].error_message
    sae = (await stub.GetSae(pb.GetSaeRequest(id=sae_id))).sae
    assert sae.state == sae_pb2.SAE_STATE_CORRUPTED
    await _expect_error(
        stub.AttachSae(pb.AttachSaeRequest(id=sae_id)),
        grpc.StatusCode.DATA_LOSS,
        "CORRUPTED_FILE",
        "is corrupted",
    )
    # Downloading again after the fault is gone repairs it.
    _, snapshots = await _download(
        stub, channel, hub=sae_pb2.HubSaeSource(repo_id="acme/corrupt", path="l9")
    )
    assert snapshots[-1].state == operation_pb2.OPERATION_STATE_SUCCEEDED
    assert (await stub.GetSae(pb.GetSaeRequest(id=sae_id))).sae.state == sae_pb2.SAE_STATE_READY


async def test_release_download_and_the_incompatibility_it_reports(stub, channel):
    releases = await stub.ListSaeReleases(pb.ListSaeReleasesRequest(model_filter="gpt2"))
    jb = next(r for r in releases.releases if r.name == "gpt2-small-res-jb")
    assert jb.supported and jb.repo_id == GPT2_REPO and "blocks.0.hook_resid_pre" in jb.sae_ids
    source = sae_pb2.ReleaseSaeSource(release="gpt2-small-res-jb", sae_id="blocks.0.hook_resid_pre")
    sae_id, snapshots = await _download(stub, channel, release=source)
    assert snapshots[-1].state == operation_pb2.OPERATION_STATE_SUCCEEDED
    sae = (await stub.GetSae(pb.GetSaeRequest(id=sae_id))).sae
    assert sae.source.release.release == "gpt2-small-res-jb"
    result = (
        await stub.CheckSaeCompatibility(pb.CheckSaeCompatibilityRequest(id=sae_id))
    ).compatibility
    assert not result.compatible
    assert [e.reason for e in result.errors] == ["INCOMPATIBLE_SAE"]
    assert "width 768" in result.errors[0].message and "576" in result.errors[0].message
    assert any("gpt2-small" in w.message for w in result.warnings)
    assert (result.model_d_model, result.model_num_layers) == (576, 30)
    await _expect_error(
        stub.AttachSae(pb.AttachSaeRequest(id=sae_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INCOMPATIBLE_SAE",
        "width 768",
    )
    await _expect_error(
        stub.DownloadSae(
            pb.DownloadSaeRequest(
                release=sae_pb2.ReleaseSaeSource(release="no-such-release", sae_id="x")
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        "not a SAELens release",
    )


# ---- import, compatibility, attach and detach ------------------------------------------------


async def test_import_checks_the_folder(stub, saes):
    imported = await _import(stub, saes["topk"], name="my topk")
    assert imported.name == "my topk" and imported.source.local.folder_name == "smol-topk"
    assert imported.state == sae_pb2.SAE_STATE_READY and imported.k == 16
    assert (await _import(stub, saes["topk"])).id == imported.id  # same weights, same SAE
    await _expect_error(
        stub.ImportSae(pb.ImportSaeRequest(path="relative/folder")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "absolute path",
    )
    await _expect_error(
        stub.ImportSae(pb.ImportSaeRequest(path=str(saes["junk"].parent / "missing"))),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
    await _expect_error(
        stub.ImportSae(pb.ImportSaeRequest(path=str(saes["junk"]))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNSUPPORTED",
    )


def _gemma_scope_folder(folder):
    """A Gemma Scope SAE (params.npz, no config): only its path says layer 5."""
    folder.mkdir(parents=True)
    sae = random_sae(architecture="jumprelu", seed=7)
    np.savez(folder / "params.npz", **{n: t.numpy() for n, t in sae.weights.tensors().items()})
    return folder


def _bare_mistudio_folder(folder):
    """A miStudio checkpoint without its config.json: only its path says layer 5."""
    write_sae(folder, random_sae(seed=8), layout="mistudio")
    (folder / "config.json").unlink()
    return folder


@pytest.mark.parametrize(
    ("make", "path"),
    [
        (_gemma_scope_folder, "layer_5/width_16k/average_l0_20"),
        (_bare_mistudio_folder, "layer_5"),
    ],
)
async def test_a_hook_known_only_from_the_path_survives_the_import(stub, tmp_path, make, path):
    imported = await _import(stub, make(tmp_path / path))
    assert imported.hook_name == "blocks.5.hook_resid_post"
    attached = await stub.AttachSae(pb.AttachSaeRequest(id=imported.id))  # no hook_name
    assert attached.attachment.hook_name == "blocks.5.hook_resid_post"


async def test_bad_layer_and_hook_names(stub, saes):
    sae_id = (await _import(stub, saes["l9"])).id
    result = (
        await stub.CheckSaeCompatibility(
            pb.CheckSaeCompatibilityRequest(id=sae_id, hook_name="blocks.50.hook_resid_post")
        )
    ).compatibility
    assert [(e.reason, e.message) for e in result.errors] == [
        ("LAYER_OUT_OF_RANGE", "Layer 50 does not exist. Model has 30 layers (0-29).")
    ]
    await _expect_error(
        stub.AttachSae(pb.AttachSaeRequest(id=sae_id, hook_name="blocks.50.hook_resid_post")),
        grpc.StatusCode.OUT_OF_RANGE,
        "LAYER_OUT_OF_RANGE",
        "Layer 50 does not exist",
    )
    await _expect_error(
        stub.AttachSae(pb.AttachSaeRequest(id=sae_id, hook_name="layer nine")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "model.layers.9",
    )
    await _expect_error(
        stub.AttachSae(pb.AttachSaeRequest(id="sae-000000000000")),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
    # Hugging Face module style names the same site.
    hf = (
        await stub.CheckSaeCompatibility(
            pb.CheckSaeCompatibilityRequest(id=sae_id, hook_name="model.layers.9")
        )
    ).compatibility
    assert hf.compatible and hf.hook_name == "blocks.9.hook_resid_post" and not hf.warnings


async def test_attached_with_nothing_steered_is_bit_identical_and_detach_frees(
    stub, channel, server, saes
):
    sae_id = (await _import(stub, saes["l9"])).id
    ids = list(range(1, 40))
    before = await _logits(server, ids)
    tokens_before, _ = await _generate(channel)
    hooks_before = _layer_hooks(server, 9)

    attached = await stub.AttachSae(pb.AttachSaeRequest(id=sae_id))
    assert attached.attachment.hook_name == "blocks.9.hook_resid_post"
    assert attached.attachment.module_name == "model.layers.9"
    # W_enc, W_dec, b_enc, b_dec and the firing frequencies, in float32.
    assert attached.attachment.sae_bytes == (2 * 576 * 256 + 256 + 576 + 256) * 4
    assert _layer_hooks(server, 9) == hooks_before + 1
    listed = await stub.ListSaeAttachments(pb.ListSaeAttachmentsRequest())
    assert [a.sae_id for a in listed.attachments] == [sae_id]
    sae = (await stub.GetSae(pb.GetSaeRequest(id=sae_id))).sae
    assert sae.attached_hook_name == "blocks.9.hook_resid_post"

    assert torch.equal(await _logits(server, ids), before)
    assert (await _generate(channel))[0] == tokens_before

    held = server.saes.attachments.list()[0].sae.weights.W_enc
    gone = weakref.ref(held)
    del held
    detached = await stub.DetachSae(pb.DetachSaeRequest())
    assert detached.attachment.sae_id == sae_id
    assert detached.freed_bytes == attached.attachment.sae_bytes
    assert detached.rss_before_bytes > 0 and detached.rss_after_bytes > 0
    assert gone() is None  # nothing holds the weights any more
    assert _layer_hooks(server, 9) == hooks_before
    assert not (await stub.ListSaeAttachments(pb.ListSaeAttachmentsRequest())).attachments
    await _expect_error(
        stub.DetachSae(pb.DetachSaeRequest()), grpc.StatusCode.NOT_FOUND, "NOT_FOUND"
    )


async def test_attach_and_detach_while_eight_streams_run(stub, channel, server, saes):
    sae_id = (await _import(stub, saes["l9"])).id
    alone, _ = await _generate(channel)
    first_tokens = asyncio.Event()
    streams = [
        asyncio.create_task(_generate(channel, on_first=first_tokens if i == 0 else None))
        for i in range(8)
    ]
    await first_tokens.wait()
    await stub.AttachSae(pb.AttachSaeRequest(id=sae_id))
    # The hook went in between two decode steps, not after the queue drained.
    assert sum(not s.done() for s in streams) >= 7
    await _expect_error(
        stub.AttachSae(pb.AttachSaeRequest(id=sae_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SAE_ALREADY_ATTACHED",
        "detach it first",
    )
    await stub.DetachSae(pb.DetachSaeRequest(hook_name="blocks.9.hook_resid_post"))
    assert sum(not s.done() for s in streams) >= 6
    results = await asyncio.gather(*streams)
    for tokens, finish in results:
        assert finish in (ipb.FINISH_REASON_STOP, ipb.FINISH_REASON_LENGTH)
        assert tokens == alone


async def test_a_failed_attach_changes_nothing(stub, server, saes, tmp_path):
    folder = write_sae(tmp_path / "breaks", random_sae(seed=7))
    sae_id = (await _import(stub, folder)).id
    cached = server.saes.catalog.get(sae_id)
    weights = cached.folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    hooks_before = _layer_hooks(server, 9)
    await _expect_error(
        stub.AttachSae(pb.AttachSaeRequest(id=sae_id)),
        grpc.StatusCode.DATA_LOSS,
        "CORRUPTED_FILE",
        "sae_weights.safetensors",
    )
    assert _layer_hooks(server, 9) == hooks_before
    assert not server.saes.attachments.list()


async def test_delete_is_refused_while_attached(stub, server, saes, tmp_path):
    folder = write_sae(tmp_path / "deletable", random_sae(seed=8))
    sae_id = (await _import(stub, folder)).id
    on_disk = server.saes.catalog.get(sae_id).folder
    await stub.AttachSae(pb.AttachSaeRequest(id=sae_id))
    try:
        await _expect_error(
            stub.DeleteSae(pb.DeleteSaeRequest(id=sae_id)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "SAE_IN_USE",
            "detach it",
        )
    finally:
        await stub.DetachSae(pb.DetachSaeRequest())
    deleted = await stub.DeleteSae(pb.DeleteSaeRequest(id=sae_id))
    assert deleted.freed_bytes > 0 and not on_disk.exists()
    await _expect_error(
        stub.GetSae(pb.GetSaeRequest(id=sae_id)), grpc.StatusCode.NOT_FOUND, "NOT_FOUND"
    )


# ---- attach options: dtype, allow_overcommit, replace -----------------------------------------


async def _top_features(server, ids: list[int], k: int = 5) -> torch.Tensor:
    """The attached SAE's k strongest features (mean over positions) at layer 9's output,
    what monitoring ranks."""
    engine = server.host.engine
    model = engine.loaded_model.model
    sae = server.saes.attachments.list()[0].sae

    def encode() -> torch.Tensor:
        with torch.inference_mode():
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[10]
            acts = sae.encode(hidden)
        assert acts.dtype == torch.float32
        return acts.mean(dim=(0, 1)).topk(k).indices.sort().values

    return await engine.call_on_lane(encode)


async def test_half_precision_halves_the_bytes_and_finds_the_same_features(
    stub, channel, server, saes
):
    sae_id = (await _import(stub, saes["l9"])).id
    ids = list(range(1, 40))
    before = await _logits(server, ids)
    full = (await stub.AttachSae(pb.AttachSaeRequest(id=sae_id))).attachment
    assert full.dtype == "float32"
    top_full = await _top_features(server, ids)
    for dtype in ("float16", "bfloat16"):
        half = (
            await stub.AttachSae(pb.AttachSaeRequest(id=sae_id, dtype=dtype, replace=True))
        ).attachment
        assert half.dtype == dtype
        # The weights halve; the firing frequencies stay float32.
        assert half.sae_bytes == (2 * 576 * 256 + 256 + 576) * 2 + 256 * 4
        assert server.saes.attachments.list()[0].sae.weights.W_enc.dtype == getattr(torch, dtype)
        if dtype == "float16":
            assert torch.equal(await _top_features(server, ids), top_full)
        # Nothing steered: the model's outputs are still exactly its own.
        assert torch.equal(await _logits(server, ids), before)
    await _expect_error(
        stub.AttachSae(pb.AttachSaeRequest(id=sae_id, dtype="int8", replace=True)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "float32, float16, bfloat16",
    )


async def test_replace_swaps_in_one_call_and_a_failed_load_keeps_the_old(
    stub, channel, server, saes, tmp_path
):
    first = (await _import(stub, saes["l9"])).id
    second = (await _import(stub, saes["topk"])).id
    steering = st_grpc.SteeringServiceStub(channel)
    hooks_9, hooks_3 = _layer_hooks(server, 9), _layer_hooks(server, 3)
    await stub.AttachSae(pb.AttachSaeRequest(id=first))
    feature = steering_pb2.SteeringFeature(
        index=3, mode=steering_pb2.STEERING_MODE_ADD, strength=5.0
    )
    await steering.SetSteering(st.SetSteeringRequest(features=[feature]))
    await _expect_error(
        stub.AttachSae(pb.AttachSaeRequest(id=second)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SAE_ALREADY_ATTACHED",
        "`replace: true`",
    )
    # A new SAE that fails to load leaves the old one attached, steering and all.
    broken_folder = write_sae(tmp_path / "breaks-on-replace", random_sae(seed=9))
    broken = (await _import(stub, broken_folder)).id
    weights = server.saes.catalog.get(broken).folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    await _expect_error(
        stub.AttachSae(pb.AttachSaeRequest(id=broken, replace=True)),
        grpc.StatusCode.DATA_LOSS,
        "CORRUPTED_FILE",
    )
    listed = (await stub.ListSaeAttachments(pb.ListSaeAttachmentsRequest())).attachments
    assert [a.sae_id for a in listed] == [first]
    assert _layer_hooks(server, 9) == hooks_9 + 1
    live = (await steering.GetSteering(st.GetSteeringRequest())).state.live
    assert [f.index for f in live.features] == [3]

    swapped = await stub.AttachSae(pb.AttachSaeRequest(id=second, replace=True))
    assert swapped.replaced.sae_id == first
    assert swapped.replaced.hook_name == "blocks.9.hook_resid_post"
    assert swapped.attachment.sae_id == second
    assert swapped.attachment.hook_name == "blocks.3.hook_resid_pre"
    assert (_layer_hooks(server, 9), _layer_hooks(server, 3)) == (hooks_9, hooks_3 + 1)
    listed = (await stub.ListSaeAttachments(pb.ListSaeAttachmentsRequest())).attachments
    assert [a.sae_id for a in listed] == [second]
    # The old SAE's live steering named its features: forgotten, as a detach forgets it.
    state = (await steering.GetSteering(st.GetSteeringRequest())).state
    assert not state.live.features and state.sae_id == second
    # The history holds both, the first closed as replaced.
    history = server.saes._history.newest(2)
    assert [(h.sae_id, h.ended_by) for h in history] == [(second, None), (first, "replaced")]

    # A saved active profile of the SAE swapped in comes back, as on every attach.
    profiles = ppb_grpc.ProfileServiceStub(channel)
    await profiles.CreateProfile(ppb.CreateProfileRequest(name="swap-back", features=[feature]))
    try:
        await profiles.ActivateProfile(ppb.ActivateProfileRequest(name="swap-back"))
        await stub.AttachSae(pb.AttachSaeRequest(id=first, replace=True))
        assert (await steering.GetSteering(st.GetSteeringRequest())).state.active_profile == ""
        await stub.AttachSae(pb.AttachSaeRequest(id=second, replace=True))
        state = (await steering.GetSteering(st.GetSteeringRequest())).state
        assert state.active_profile == "swap-back"
    finally:
        await profiles.DeactivateProfile(ppb.DeactivateProfileRequest())
        await profiles.DeleteProfile(ppb.DeleteProfileRequest(name="swap-back"))


async def test_allow_overcommit_attaches_with_the_memory_warning(stub, server, saes, monkeypatch):
    sae_id = (await _import(stub, saes["l9"])).id
    monkeypatch.setattr(manager, "available_memory", lambda device: 1000)
    await _expect_error(
        stub.AttachSae(pb.AttachSaeRequest(id=sae_id)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "OUT_OF_MEMORY",
        "allow_overcommit",
    )
    assert not server.saes.attachments.list()
    attached = await stub.AttachSae(pb.AttachSaeRequest(id=sae_id, allow_overcommit=True))
    assert attached.attachment.sae_id == sae_id
    [warning] = [w for w in attached.warnings if w.reason == "OUT_OF_MEMORY"]
    assert "Attaching anyway" in warning.message


# ---- export, upload, cache, start-up validation ------------------------------------------------


@pytest.mark.parametrize("layout", [sae_pb2.SAE_LAYOUT_SAELENS, sae_pb2.SAE_LAYOUT_MISTUDIO])
async def test_export_streams_a_zip_that_loads_to_the_same_tensors(stub, saes, tmp_path, layout):
    sae_id = (await _import(stub, saes["topk"])).id
    chunks = [c async for c in stub.ExportSae(pb.ExportSaeRequest(id=sae_id, layout=layout))]
    suffix = "saelens" if layout == sae_pb2.SAE_LAYOUT_SAELENS else "mistudio"
    assert chunks[0].filename.endswith(f".{suffix}.zip")
    with zipfile.ZipFile(io.BytesIO(b"".join(c.data for c in chunks))) as archive:
        archive.extractall(tmp_path / "out")
    original, exported = load_sae(saes["topk"]), load_sae(tmp_path / "out")
    for name, tensor in original.weights.tensors().items():
        assert torch.equal(exported.weights.tensors()[name], tensor), name
    assert exported.spec.k == 16 and exported.spec.hook_name == "blocks.3.hook_resid_pre"


async def test_upload_then_download_gives_identical_files(stub, channel, server, hub, saes):
    sae_id = (await _import(stub, saes["l9"])).id
    started = await stub.UploadSae(
        pb.UploadSaeRequest(id=sae_id, repo_id="me/uploaded", token="hf_secret_token")
    )
    snapshots = await _watch(channel, started.operation.id)
    assert snapshots[-1].state == operation_pb2.OPERATION_STATE_SUCCEEDED, snapshots[-1]
    assert snapshots[-1].kind == operation_pb2.OPERATION_KIND_SAE_UPLOAD
    uploaded = hub.files("me/uploaded")
    assert set(uploaded) >= {
        "blocks.9.hook_resid_post/cfg.json",
        "blocks.9.hook_resid_post/sae_weights.safetensors",
    }
    assert all("hf_secret_token" not in repr(r) for r in hub.requests)
    new_id, snapshots = await _download(
        stub,
        channel,
        hub=sae_pb2.HubSaeSource(repo_id="me/uploaded", path="blocks.9.hook_resid_post"),
    )
    assert snapshots[-1].state == operation_pb2.OPERATION_STATE_SUCCEEDED
    folder = server.saes.catalog.get(new_id).folder
    downloaded = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert downloaded == {
        path.split("/", 1)[1]: _content(f)
        for path, f in uploaded.items()
        if path.startswith("blocks.9.hook_resid_post/")
    }
    await _expect_error(
        stub.UploadSae(pb.UploadSaeRequest(id=sae_id, repo_id="me/other")),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
        "HF_TOKEN",
    )


def _content(f) -> bytes:
    return f.data if f.data is not None else f.source.read_bytes()


async def test_cache_usage_counts_every_sae(stub, server):
    usage = await stub.GetSaeCacheUsage(pb.GetSaeCacheUsageRequest())
    listed = (await stub.ListSaes(pb.ListSaesRequest(page_size=200))).saes
    assert usage.sae_count == len(listed) > 0
    root = server.settings.data_dir / "saes"
    assert usage.used_bytes == sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert usage.free_bytes > 0


async def test_startup_validation_finds_missing_and_broken_saes(stub, server, tmp_path):
    gone = (await _import(stub, write_sae(tmp_path / "gone", random_sae(seed=11)))).id
    broken = (await _import(stub, write_sae(tmp_path / "broken", random_sae(seed=12)))).id
    catalog = server.saes.catalog
    for path in catalog.get(gone).folder.iterdir():
        path.unlink()
    (catalog.get(broken).folder / "cfg.json").write_text("{not json")
    catalog.reconcile()
    assert (await stub.GetSae(pb.GetSaeRequest(id=gone))).sae.state == sae_pb2.SAE_STATE_MISSING
    assert (await stub.GetSae(pb.GetSaeRequest(id=broken))).sae.state == sae_pb2.SAE_STATE_CORRUPTED


async def test_without_a_model_compatibility_says_so(stub, server, saes):
    """Runs last: it unloads the module's model, and the attachment with it."""
    sae_id = (await _import(stub, saes["l9"])).id
    await stub.AttachSae(pb.AttachSaeRequest(id=sae_id))
    await server.host.unload()
    assert not server.saes.attachments.list()
    [closed] = server.saes._history.newest(1)
    assert (closed.sae_id, closed.ended_by) == (sae_id, "model_changed")
    assert server.saes._history.last_open() is None
    await _expect_error(
        stub.CheckSaeCompatibility(pb.CheckSaeCompatibilityRequest(id=sae_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_MODEL_LOADED",
        "No model is loaded",
    )
