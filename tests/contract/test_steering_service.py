"""Steering, profiles and monitoring over real gRPC with the built-in model and an SAE
attached at its last layer (where a strong add makes the feature's logit-lens token win,
so its effect on every generated token is plain to see)."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import weakref
from dataclasses import fields

import grpc
import pytest
import torch
from safetensors.torch import save_file

from inference_service.sae.architectures import Sae
from inference_service.sae.feature_stats import FEATURE_STATS_FILE
from inference_service.sae.manager import Followers
from millm.v1 import inference_service_pb2 as ipb
from millm.v1 import inference_service_pb2_grpc as ipb_grpc
from millm.v1 import monitoring_service_pb2 as mpb
from millm.v1 import monitoring_service_pb2_grpc as mpb_grpc
from millm.v1 import profile_service_pb2 as ppb
from millm.v1 import profile_service_pb2_grpc as ppb_grpc
from millm.v1 import sae_service_pb2 as spb
from millm.v1 import sae_service_pb2_grpc as spb_grpc
from millm.v1 import steering_pb2
from millm.v1 import steering_service_pb2 as pb
from millm.v1 import steering_service_pb2_grpc as pb_grpc
from tests.contract.test_sae_service import _expect_error
from tests.fixtures.saes import orthonormal_sae, write_sae
from tests.fixtures.servers import running_server

HOOK = "blocks.29.hook_resid_post"
D_SAE = 64
FEATURE = 7
ADD = steering_pb2.STEERING_MODE_ADD
CLAMP = steering_pb2.STEERING_MODE_CLAMP
PROMPT = [ipb.ChatMessage(role="user", content="Tell me about the sea.")]


def _sae() -> Sae:
    return orthonormal_sae(d_sae=D_SAE, hook_name=HOOK, model_name="smollm2-135m-instruct")


@pytest.fixture(scope="module")
async def server(data_dir, tmp_path_factory):
    own = tmp_path_factory.mktemp("steering-service")
    async with running_server(data_dir, own) as srv:
        yield srv


@pytest.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def lens_token(server) -> int:
    model = server.host.engine.loaded_model.model
    direction = model.model.norm.weight * _sae().weights.W_dec[FEATURE]
    return int(torch.argmax(model.lm_head.weight @ direction))


@pytest.fixture
async def attached(server, channel, tmp_path_factory):
    """The SAE attached for one test; the live steering cleared afterwards."""
    saes = spb_grpc.SaeServiceStub(channel)
    folder = write_sae(tmp_path_factory.mktemp("sae") / "last-layer", _sae())
    sae = (await saes.ImportSae(spb.ImportSaeRequest(path=str(folder)))).sae
    await saes.AttachSae(spb.AttachSaeRequest(id=sae.id))
    yield sae
    steering = pb_grpc.SteeringServiceStub(channel)
    await steering.ClearSteering(pb.ClearSteeringRequest())
    await steering.SetSteeringEnabled(pb.SetSteeringEnabledRequest(enabled=True))
    await ppb_grpc.ProfileServiceStub(channel).DeactivateProfile(ppb.DeactivateProfileRequest())
    if server.saes.attachments.list():
        await saes.DetachSae(spb.DetachSaeRequest())


def strong(strength: float = 2000.0) -> steering_pb2.SteeringFeature:
    return steering_pb2.SteeringFeature(index=FEATURE, mode=ADD, strength=strength)


async def generate(
    channel, steering=None, activations=None, tokens: int = 8, update_after=None, update=None
) -> tuple[list[int], list[ipb.TokenDelta]]:
    start = ipb.GenerateStart(
        chat=ipb.ChatMessages(messages=PROMPT),
        sampling=ipb.SamplingParams(temperature=0.0, max_tokens=tokens),
    )
    if steering is not None:
        start.steering.CopyFrom(steering)
    if activations is not None:
        start.activations.CopyFrom(activations)
    outbox: asyncio.Queue[ipb.GenerateRequest | None] = asyncio.Queue()
    await outbox.put(ipb.GenerateRequest(start=start))

    async def requests():
        while (message := await outbox.get()) is not None:
            yield message

    ids: list[int] = []
    deltas: list[ipb.TokenDelta] = []
    async for response in ipb_grpc.InferenceServiceStub(channel).Generate(requests()):
        if response.HasField("delta"):
            deltas.append(response.delta)
            ids.extend(response.delta.token_ids)
            if update is not None and len(deltas) == update_after:
                await outbox.put(ipb.GenerateRequest(steering=update))
        elif response.HasField("finished"):
            break
    await outbox.put(None)
    return ids, deltas


async def test_steering_needs_an_attached_sae(channel, server):
    assert not server.saes.attachments.list()
    await _expect_error(
        pb_grpc.SteeringServiceStub(channel).SetSteering(
            pb.SetSteeringRequest(features=[strong()])
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_SAE_ATTACHED",
        "attach one first",
    )
    await _expect_error(
        generate(
            channel,
            steering_pb2.RequestSteering(
                features=steering_pb2.SteeringSet(features=[strong()], enabled=True)
            ),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_SAE_ATTACHED",
    )


async def test_bad_features_are_refused_with_the_valid_range(channel, attached):
    stub = pb_grpc.SteeringServiceStub(channel)
    state = (await stub.GetSteering(pb.GetSteeringRequest())).state
    assert (state.sae_id, state.d_sae) == (attached.id, D_SAE)
    await _expect_error(
        stub.SetSteering(
            pb.SetSteeringRequest(features=[steering_pb2.SteeringFeature(index=64, strength=1)])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "has 64 features (0 to 63)",
    )
    await _expect_error(
        stub.SetSteering(pb.SetSteeringRequest(features=[strong(float("inf"))])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "finite",
    )


async def test_live_steering_switch_and_clear(channel, attached, lens_token):
    stub = pb_grpc.SteeringServiceStub(channel)
    baseline, _ = await generate(channel)
    await stub.SetSteering(pb.SetSteeringRequest(features=[strong()]))
    assert (await generate(channel))[0] == [lens_token] * 8
    state = (await stub.SetSteeringEnabled(pb.SetSteeringEnabledRequest(enabled=False))).state
    assert len(state.live.features) == 1 and not state.live.enabled  # settings kept
    assert (await generate(channel))[0] == baseline
    await stub.SetSteeringEnabled(pb.SetSteeringEnabledRequest(enabled=True))
    assert (await generate(channel))[0] == [lens_token] * 8
    await stub.ClearSteering(pb.ClearSteeringRequest())
    assert (await generate(channel))[0] == baseline


async def test_detach_after_steering_frees_the_weights(channel, server, attached):
    """Compiled steering caches hold SAE tensors; a detach must let them go too."""
    steering = pb_grpc.SteeringServiceStub(channel)
    await steering.SetSteering(
        pb.SetSteeringRequest(
            features=[strong(), steering_pb2.SteeringFeature(index=3, mode=CLAMP, strength=1)]
        )
    )
    await generate(channel, tokens=3)
    gone = weakref.ref(server.saes.attachments.list()[0].sae.weights.W_dec)
    await spb_grpc.SaeServiceStub(channel).DetachSae(spb.DetachSaeRequest())
    gc.collect()
    assert gone() is None


async def test_per_request_steering_never_leaks(channel, attached, lens_token):
    own = steering_pb2.RequestSteering(
        features=steering_pb2.SteeringSet(features=[strong()], enabled=True)
    )
    off = steering_pb2.RequestSteering(disabled=True)
    steered_alone, _ = await generate(channel, own)
    plain_alone, _ = await generate(channel, off)
    assert steered_alone == [lens_token] * 8 and plain_alone != steered_alone
    together = await asyncio.gather(
        generate(channel, own), generate(channel, off), generate(channel, own)
    )
    assert [ids for ids, _ in together] == [steered_alone, plain_alone, steered_alone]
    # With global steering on, a request that turns steering off still gets none.
    await pb_grpc.SteeringServiceStub(channel).SetSteering(
        pb.SetSteeringRequest(features=[strong()])
    )
    assert (await generate(channel, off))[0] == plain_alone


async def test_profiles_by_request_and_activation_and_exchange(channel, attached, lens_token):
    profiles = ppb_grpc.ProfileServiceStub(channel)
    baseline, _ = await generate(channel)
    created = await profiles.CreateProfile(
        ppb.CreateProfileRequest(name="lens", description="one token", features=[strong()])
    )
    assert created.profile.sae.weights_sha256 == attached.weights_sha256
    by_request = steering_pb2.RequestSteering(profile="lens")
    assert (await generate(channel, by_request))[0] == [lens_token] * 8
    assert (await generate(channel))[0] == baseline  # nothing global yet
    await profiles.ActivateProfile(ppb.ActivateProfileRequest(name="lens"))
    state = (await pb_grpc.SteeringServiceStub(channel).GetSteering(pb.GetSteeringRequest())).state
    assert state.active_profile == "lens"
    assert (await generate(channel))[0] == [lens_token] * 8
    await _expect_error(
        generate(channel, steering_pb2.RequestSteering(profile="nope")),
        grpc.StatusCode.NOT_FOUND,
        "PROFILE_NOT_FOUND",
    )
    exported = (await profiles.ExportProfile(ppb.ExportProfileRequest(name="lens"))).json
    assert json.loads(exported)["schema"] == "millm.profile/v1"
    await profiles.ImportProfile(ppb.ImportProfileRequest(json=exported, overwrite=True))
    again = (await profiles.ExportProfile(ppb.ExportProfileRequest(name="lens"))).json
    assert again == exported
    await profiles.DeleteProfile(ppb.DeleteProfileRequest(name="lens"))


async def test_steering_changes_mid_generation_through_the_stream(channel, attached, lens_token):
    baseline, _ = await generate(channel, tokens=10)
    # Stronger than elsewhere: mid-sentence the model's own prediction pushes back harder.
    update = steering_pb2.RequestSteering(
        features=steering_pb2.SteeringSet(features=[strong(20000.0)], enabled=True)
    )
    ids, _ = await generate(channel, tokens=10, update_after=3, update=update)
    # The update lands within a step or two of being sent (the stream is asynchronous).
    changed = next(i for i, (a, b) in enumerate(zip(ids, baseline, strict=True)) if a != b)
    assert 3 <= changed <= 5
    assert ids[:changed] == baseline[:changed] and set(ids[changed:]) == {lens_token}, ids


async def test_activations_come_with_the_deltas(channel, attached):
    request = steering_pb2.ActivationRequest(features=[FEATURE, 3], top_k=4)
    ids, deltas = await generate(channel, activations=request, tokens=5)
    positions = [a.position for d in deltas for a in d.activations]
    assert positions == list(range(len(positions)))  # prompt positions first, in order
    first, last = deltas[0].activations, deltas[-1].activations
    assert len(first) > 5 and len(last) == 1  # the prompt, then one token per step
    assert [f.index for f in first[0].features] == [FEATURE, 3]
    assert last[0].token_id == ids[-2]  # a token's activations come when it is read
    for token in first:
        assert len(token.top) <= 4 and all(t.value > 0 for t in token.top)
    await _expect_error(
        generate(channel, activations=steering_pb2.ActivationRequest(features=[64])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "out of range",
    )


async def test_monitor_stream_sees_generations_and_embeddings(channel, attached):
    monitor = mpb_grpc.MonitoringServiceStub(channel)
    control: asyncio.Queue[mpb.MonitorRequest] = asyncio.Queue()
    await control.put(mpb.MonitorRequest(top_k=3))

    async def requests():
        while True:
            yield await control.get()

    call = monitor.Monitor(requests())
    await asyncio.sleep(0.5)  # subscribed
    await ipb_grpc.InferenceServiceStub(channel).Embed(
        ipb.EmbedRequest(inputs=[ipb.EmbedInput(text="monitor me")])
    )
    await generate(channel, tokens=3)
    sources = []
    async for response in call:
        sources.append(response.frame.source)
        assert response.frame.hook_name == HOOK
        assert all(len(t.top) <= 3 for t in response.frame.tokens)
        if "generate" in sources:
            break
    call.cancel()
    assert sources[0] == "embed" and "generate" in sources


async def test_attach_and_detach_consequences_run_in_one_order(channel, server, tmp_path_factory):
    """Attach: compiled steering and monitoring start over, the SAE comes with the
    feature statistics training left, a profile saved as active for it comes back.
    Detach: the live steering and the profile stop. Every step but the database read
    runs on the event loop, after the snapshot swap."""
    loop_thread = threading.current_thread()
    followers = server.saes._followers
    calls: list[tuple[str, tuple, str | None, bool]] = []

    def recorded(name: str, call):
        def record(*args):
            active = server.active_sae.get()
            on_loop = threading.current_thread() is loop_thread
            calls.append((name, args, active.sae_id if active else None, on_loop))
            return call(*args)

        return record

    server.saes._followers = Followers(
        **{f.name: recorded(f.name, getattr(followers, f.name)) for f in fields(Followers)}
    )
    saes = spb_grpc.SaeServiceStub(channel)
    steering = pb_grpc.SteeringServiceStub(channel)
    profiles = ppb_grpc.ProfileServiceStub(channel)
    monitoring = mpb_grpc.MonitoringServiceStub(channel)
    # Weights of its own: an import of weights already cached would reuse that folder.
    own = orthonormal_sae(d_sae=D_SAE, hook_name=HOOK, b_enc=torch.full((D_SAE,), -1e-3))
    folder = write_sae(tmp_path_factory.mktemp("sae") / "with-stats", own)
    feature_max = torch.arange(D_SAE, dtype=torch.float32) * 1.5
    save_file({"max_activation": feature_max}, str(folder / FEATURE_STATS_FILE))
    try:
        sae = (await saes.ImportSae(spb.ImportSaeRequest(path=str(folder)))).sae
        await saes.AttachSae(spb.AttachSaeRequest(id=sae.id))
        await profiles.CreateProfile(ppb.CreateProfileRequest(name="kept", features=[strong()]))
        await profiles.ActivateProfile(ppb.ActivateProfileRequest(name="kept"))
        await steering.SetSteering(pb.SetSteeringRequest(features=[strong(5.0)]))
        config = mpb.MonitoringConfig(record_history=True, top_k=3)
        await monitoring.SetMonitoringConfig(mpb.SetMonitoringConfigRequest(config=config))
        await generate(channel, tokens=2)
        assert server.steering._compiled and server.monitor.history()

        calls.clear()
        await saes.DetachSae(spb.DetachSaeRequest())
        assert calls == [
            ("forget_compiled_steering", (), None, True),
            ("reset_monitor", (None,), None, True),
            ("forget_steering", (), None, True),
        ]
        state = (await steering.GetSteering(pb.GetSteeringRequest())).state
        assert (state.sae_id, state.active_profile, len(state.live.features)) == ("", "", 0)
        assert not server.steering._compiled and not server.monitor.history()

        calls.clear()
        await saes.AttachSae(spb.AttachSaeRequest(id=sae.id))
        assert calls == [
            ("forget_compiled_steering", (), None, True),
            ("reset_monitor", (D_SAE,), None, True),
            ("restore_profile", (), sae.id, False),  # reads the database off the loop
        ]
        state = (await steering.GetSteering(pb.GetSteeringRequest())).state
        assert state.active_profile == "kept" and not state.live.features
        assert state.max_activations[FEATURE] == pytest.approx(float(feature_max[FEATURE]))
        assert server.active_sae.get().feature_max is not None
    finally:
        server.saes._followers = followers
        config = mpb.MonitoringConfig(record_history=False, top_k=10)
        await monitoring.SetMonitoringConfig(mpb.SetMonitoringConfigRequest(config=config))
        await monitoring.ClearMonitoringHistory(mpb.ClearMonitoringHistoryRequest())
        await profiles.DeactivateProfile(ppb.DeactivateProfileRequest())
        await profiles.DeleteProfile(ppb.DeleteProfileRequest(name="kept"))
        if server.saes.attachments.list():
            await saes.DetachSae(spb.DetachSaeRequest())
