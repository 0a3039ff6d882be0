"""ProfileService over a real grpc.aio server with the real error interceptor."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from inference_service.interceptors import ErrorInterceptor
from inference_service.profiles import ProfileManager
from inference_service.servicers.profiles import ProfileServicer
from inference_service.steering.state import SteeringState
from inference_service.steering.types import SteeringFeature, SteeringSet
from millm.v1 import profile_service_pb2 as pb
from millm.v1 import profile_service_pb2_grpc as pb_grpc
from millm.v1 import steering_pb2
from tests.unit.profiles.conftest import SAE_A, SAE_B, Attachment

CAPS = steering_pb2.SteeringFeature(
    index=7, mode=steering_pb2.STEERING_MODE_ADD, strength=8.0, label="caps"
)
CALM = steering_pb2.SteeringFeature(index=3, mode=steering_pb2.STEERING_MODE_CLAMP, strength=-2.5)


@pytest.fixture
async def stub(manager: ProfileManager) -> AsyncIterator[pb_grpc.ProfileServiceStub]:
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    pb_grpc.add_ProfileServiceServicer_to_server(ProfileServicer(manager), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.ProfileServiceStub(channel)
    await server.stop(0)


async def _error(call) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value) or status_pb2.Status()
    info = error_details_pb2.ErrorInfo()
    for detail in status.details:
        detail.Unpack(info)
    return caught.value.code(), info.reason, caught.value.details() or "", dict(info.metadata)


async def test_create_get_list_update_delete(stub: pb_grpc.ProfileServiceStub) -> None:
    created = (
        await stub.CreateProfile(
            pb.CreateProfileRequest(name="yelling", description="shouts", features=[CAPS])
        )
    ).profile
    assert created.name == "yelling"
    assert created.sae == pb.ProfileSae(
        sae_id="sae-a",
        name=SAE_A.sae_name,
        weights_sha256=SAE_A.weights_sha256,
        hook_name=SAE_A.hook_name,
        d_sae=SAE_A.d_sae,
    )
    assert list(created.features) == [CAPS]
    assert created.created_at_unix_ms > 1_700_000_000_000
    assert created.active is False

    got = (await stub.GetProfile(pb.GetProfileRequest(name="yelling"))).profile
    assert got == created

    updated = (
        await stub.UpdateProfile(pb.UpdateProfileRequest(name="yelling", description="louder"))
    ).profile
    assert (updated.description, list(updated.features)) == ("louder", [CAPS])
    # An empty description is a change when it is set.
    updated = (
        await stub.UpdateProfile(
            pb.UpdateProfileRequest(
                name="yelling", description="", replace_features=True, features=[CALM]
            )
        )
    ).profile
    assert (updated.description, list(updated.features)) == ("", [CALM])

    await stub.DeleteProfile(pb.DeleteProfileRequest(name="yelling"))
    listed = await stub.ListProfiles(pb.ListProfilesRequest())
    assert list(listed.profiles) == []


async def test_list_pages(stub: pb_grpc.ProfileServiceStub) -> None:
    for name in ("c", "a", "b"):
        await stub.CreateProfile(pb.CreateProfileRequest(name=name, features=[CAPS]))
    first = await stub.ListProfiles(pb.ListProfilesRequest(page_size=2))
    assert [p.name for p in first.profiles] == ["a", "b"]
    second = await stub.ListProfiles(
        pb.ListProfilesRequest(page_size=2, page_token=first.next_page_token)
    )
    assert [p.name for p in second.profiles] == ["c"]
    assert second.next_page_token == ""


async def test_activate_and_deactivate(
    stub: pb_grpc.ProfileServiceStub, steering: SteeringState
) -> None:
    await stub.CreateProfile(pb.CreateProfileRequest(name="yelling", features=[CAPS]))
    await stub.CreateProfile(pb.CreateProfileRequest(name="calm", features=[CALM]))
    active = (await stub.ActivateProfile(pb.ActivateProfileRequest(name="yelling"))).profile
    assert active.active is True
    assert steering.effective() == SteeringSet((SteeringFeature(7, "add", 8.0, label="caps"),))

    listed = await stub.ListProfiles(pb.ListProfilesRequest())
    assert {p.name: p.active for p in listed.profiles} == {"calm": False, "yelling": True}

    done = await stub.DeactivateProfile(pb.DeactivateProfileRequest())
    assert done.previous == "yelling"
    done = await stub.DeactivateProfile(pb.DeactivateProfileRequest())
    assert done.previous == ""


async def test_export_import(stub: pb_grpc.ProfileServiceStub, attachment: Attachment) -> None:
    await stub.CreateProfile(pb.CreateProfileRequest(name="yelling", features=[CAPS]))
    exported = (await stub.ExportProfile(pb.ExportProfileRequest(name="yelling"))).json
    await stub.DeleteProfile(pb.DeleteProfileRequest(name="yelling"))

    attachment.target = SAE_B
    code, reason, message, _ = await _error(
        stub.ImportProfile(pb.ImportProfileRequest(json=exported))
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INCOMPATIBLE_SAE")
    assert SAE_A.weights_sha256 in message and SAE_B.weights_sha256 in message

    forced = await stub.ImportProfile(pb.ImportProfileRequest(json=exported, force=True))
    assert forced.profile.name == "yelling"
    assert [m.split(":")[0] for m in forced.mismatches] == [
        "sae.weights_sha256",
        "sae.hook_name",
        "sae.d_sae",
    ]
    again = (await stub.ExportProfile(pb.ExportProfileRequest(name="yelling"))).json
    assert again == exported


async def test_error_statuses(stub: pb_grpc.ProfileServiceStub, attachment: Attachment) -> None:
    code, reason, message, metadata = await _error(
        stub.GetProfile(pb.GetProfileRequest(name="ghost"))
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "PROFILE_NOT_FOUND")
    assert message == "No profile is named 'ghost'; list them with ProfileService.ListProfiles."
    assert metadata == {"param": "name"}

    code, reason, message, _ = await _error(
        stub.CreateProfile(pb.CreateProfileRequest(name="gpt2:yelling", features=[CAPS]))
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert "'<model>:<profile>'" in message

    await stub.CreateProfile(pb.CreateProfileRequest(name="yelling", features=[CAPS]))
    code, _, _, metadata = await _error(
        stub.CreateProfile(pb.CreateProfileRequest(name="yelling", features=[CAPS]))
    )
    assert code is grpc.StatusCode.ALREADY_EXISTS
    assert metadata == {"param": "name"}

    code, reason, _, _ = await _error(stub.ImportProfile(pb.ImportProfileRequest(json="{")))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")

    code, reason, _, _ = await _error(
        stub.ListProfiles(pb.ListProfilesRequest(page_token="not-a-token"))
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")

    attachment.target = None
    code, reason, _, _ = await _error(
        stub.ActivateProfile(pb.ActivateProfileRequest(name="yelling"))
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_SAE_ATTACHED")
    code, reason, _, _ = await _error(stub.CreateProfile(pb.CreateProfileRequest(name="new")))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_SAE_ATTACHED")
