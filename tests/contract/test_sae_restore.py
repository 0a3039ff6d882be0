"""The attached SAE, its live steering and active profile survive a restart of the
service: real servers started one after another on one data directory."""

from __future__ import annotations

from contextlib import asynccontextmanager

import grpc
import pytest
from sqlalchemy import update

from inference_service.storage.tables import SaeAttachmentRow
from millm.v1 import profile_service_pb2 as ppb
from millm.v1 import profile_service_pb2_grpc as ppb_grpc
from millm.v1 import sae_pb2, steering_pb2
from millm.v1 import sae_service_pb2 as pb
from millm.v1 import sae_service_pb2_grpc as pb_grpc
from millm.v1 import steering_service_pb2 as spb
from millm.v1 import steering_service_pb2_grpc as spb_grpc
from tests.fixtures.saes import random_sae, write_sae
from tests.fixtures.servers import running_server

HOOK = "blocks.8.hook_resid_post"  # not the SAE's own site: the hook must come back as chosen
LIVE = [
    steering_pb2.SteeringFeature(index=3, mode=steering_pb2.STEERING_MODE_ADD, strength=5.0),
    steering_pb2.SteeringFeature(index=7, mode=steering_pb2.STEERING_MODE_CLAMP, strength=2.5),
]
PROFILE = [steering_pb2.SteeringFeature(index=5, mode=steering_pb2.STEERING_MODE_ADD, strength=1)]


@asynccontextmanager
async def _served(data_dir, own):
    """A server on `own`, once its start-up restore is done, and a channel to it."""
    async with running_server(data_dir, own) as server:
        await server.wait_until_restored()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield server, channel


async def _attachments(channel) -> pb.ListSaeAttachmentsResponse:
    return await pb_grpc.SaeServiceStub(channel).ListSaeAttachments(pb.ListSaeAttachmentsRequest())


async def _steering(channel) -> steering_pb2.SteeringState:
    return (await spb_grpc.SteeringServiceStub(channel).GetSteering(spb.GetSteeringRequest())).state


@pytest.mark.timeout(600)
async def test_attachment_steering_and_profile_survive_restarts(data_dir, tmp_path):
    own = tmp_path / "service"
    folder = write_sae(tmp_path / "source", random_sae(seed=21))

    # 1. Attach in float16 at a chosen hook, save and activate a profile, set live steering.
    async with _served(data_dir, own) as (server, channel):
        assert (await _attachments(channel)).restore.state == sae_pb2.SAE_RESTORE_STATE_NOTHING
        saes = pb_grpc.SaeServiceStub(channel)
        sae_id = (await saes.ImportSae(pb.ImportSaeRequest(path=str(folder)))).sae.id
        await saes.AttachSae(pb.AttachSaeRequest(id=sae_id, hook_name=HOOK, dtype="float16"))
        profiles = ppb_grpc.ProfileServiceStub(channel)
        await profiles.CreateProfile(ppb.CreateProfileRequest(name="calm", features=PROFILE))
        await profiles.ActivateProfile(ppb.ActivateProfileRequest(name="calm"))
        steering = spb_grpc.SteeringServiceStub(channel)
        await steering.SetSteering(spb.SetSteeringRequest(features=LIVE))
        await steering.SetSteeringEnabled(spb.SetSteeringEnabledRequest(enabled=False))
        before = await _steering(channel)

    # 2. After the restart all of it is back.
    async with _served(data_dir, own) as (server, channel):
        listed = await _attachments(channel)
        assert listed.restore.state == sae_pb2.SAE_RESTORE_STATE_RESTORED
        assert (listed.restore.sae_id, listed.restore.hook_name) == (sae_id, HOOK)
        [attachment] = listed.attachments
        assert (attachment.sae_id, attachment.hook_name, attachment.dtype) == (
            sae_id,
            HOOK,
            "float16",
        )
        after = await _steering(channel)
        assert after.live == before.live and not after.live.enabled
        assert list(after.live.features) == LIVE
        assert after.active_profile == "calm"
        assert after.sae_id == sae_id
        history = server.saes._history.newest(3)
        assert [(h.sae_id, h.hook_name, h.ended_by) for h in history] == [
            (sae_id, HOOK, None),
            (sae_id, HOOK, "restored"),
        ]
        assert history[1].detached_at is not None and history[0].dtype == "float16"
        # The model served next time is another one.
        server.db.run(
            lambda session: session.execute(
                update(SaeAttachmentRow)
                .where(SaeAttachmentRow.detached_at.is_(None))
                .values(model_id="acme/another-model")
            )
        )

    # 3. The model differs: a clear state, nothing attached, and the row closed.
    async with _served(data_dir, own) as (server, channel):
        listed = await _attachments(channel)
        assert not listed.attachments
        assert listed.restore.state == sae_pb2.SAE_RESTORE_STATE_FAILED
        assert listed.restore.sae_id == sae_id
        assert "acme/another-model" in listed.restore.message
        assert server.saes._history.last_open() is None
        assert server.saes._history.newest(1)[0].ended_by == "restore_failed"
        assert not (await _steering(channel)).live.features
        # Attach again for the next run.
        await pb_grpc.SaeServiceStub(channel).AttachSae(pb.AttachSaeRequest(id=sae_id))
        weights = server.saes.catalog.get(sae_id).folder / "sae_weights.safetensors"

    # 4. The SAE's files are gone between runs: a clear state again, and no crash.
    weights.unlink()
    async with _served(data_dir, own) as (server, channel):
        listed = await _attachments(channel)
        assert not listed.attachments
        assert listed.restore.state == sae_pb2.SAE_RESTORE_STATE_FAILED
        assert listed.restore.reason == "CORRUPTED_FILE"
        assert sae_id in listed.restore.message
        assert server.saes._history.last_open() is None
        # The service keeps serving.
        assert server.host.engine is not None
