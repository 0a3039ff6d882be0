"""An inference service killed with SIGKILL, in the middle of replacing its SAE, comes
back with a consistent attachment: the old SAE with its live steering, or the new one
without any."""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest

from millm.v1 import sae_pb2, steering_pb2
from millm.v1 import sae_service_pb2 as pb
from millm.v1 import sae_service_pb2_grpc as pb_grpc
from millm.v1 import steering_service_pb2 as spb
from millm.v1 import steering_service_pb2_grpc as spb_grpc
from tests.conftest import free_port
from tests.e2e.test_download_restart import _start_service
from tests.fixtures.saes import random_sae, write_sae

pytestmark = pytest.mark.e2e

LIVE = [steering_pb2.SteeringFeature(index=4, mode=steering_pb2.STEERING_MODE_ADD, strength=3.0)]


def _restored(channel: grpc.Channel) -> pb.ListSaeAttachmentsResponse:
    stub = pb_grpc.SaeServiceStub(channel)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = stub.ListSaeAttachments(pb.ListSaeAttachmentsRequest(), timeout=5)
        if listed.restore.state not in (
            sae_pb2.SAE_RESTORE_STATE_UNSPECIFIED,
            sae_pb2.SAE_RESTORE_STATE_PENDING,
        ):
            return listed
        time.sleep(0.2)
    raise TimeoutError("the restore did not finish")


def test_killed_mid_replace_restores_one_whole_attachment(data_dir, tmp_path):
    converted = next((data_dir / "models" / "converted").glob("*/config.json")).parent
    port = free_port()
    env = {
        **os.environ,
        "MILLM_DATA_DIR": str(tmp_path / "data"),
        "MILLM_GRPC_PORT": str(port),
        "MILLM_MODEL": str(converted),
    }
    first_folder = write_sae(tmp_path / "first", random_sae(seed=31))
    second_folder = write_sae(tmp_path / "second", random_sae(d_sae=512, seed=32))
    proc, channel = _start_service(env, port)
    try:
        saes = pb_grpc.SaeServiceStub(channel)
        first = saes.ImportSae(pb.ImportSaeRequest(path=str(first_folder))).sae.id
        second = saes.ImportSae(pb.ImportSaeRequest(path=str(second_folder))).sae.id
        saes.AttachSae(pb.AttachSaeRequest(id=first))
        spb_grpc.SteeringServiceStub(channel).SetSteering(spb.SetSteeringRequest(features=LIVE))
        # The replace is under way (or just done) when the process dies.
        replacing = saes.AttachSae.future(pb.AttachSaeRequest(id=second, replace=True))
        time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        channel.close()
    del replacing

    proc, channel = _start_service(env, port)
    try:
        listed = _restored(channel)
        assert listed.restore.state == sae_pb2.SAE_RESTORE_STATE_RESTORED, listed.restore
        [attachment] = listed.attachments
        live = (
            spb_grpc.SteeringServiceStub(channel).GetSteering(spb.GetSteeringRequest()).state.live
        )
        if attachment.sae_id == first:
            assert list(live.features) == LIVE
        else:
            assert attachment.sae_id == second and not live.features
        assert attachment.hook_name == "blocks.9.hook_resid_post"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        channel.close()
