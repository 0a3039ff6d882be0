"""gRPC adapter for millm.v1.ProfileService: saved steering profiles."""

from __future__ import annotations

import asyncio
from datetime import datetime

import grpc

from inference_service.profiles import Profile, ProfileManager
from inference_service.servicers import steering_convert
from inference_service.servicers.paging import next_page_token, page_bounds
from millm.v1 import profile_service_pb2 as pb
from millm.v1 import profile_service_pb2_grpc as pb_grpc


class ProfileServicer(pb_grpc.ProfileServiceServicer):
    def __init__(self, manager: ProfileManager) -> None:
        self._manager = manager

    async def ListProfiles(
        self, request: pb.ListProfilesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListProfilesResponse:
        limit, offset = page_bounds(request.page_size, request.page_token)
        profiles = await asyncio.to_thread(self._manager.list)
        page = profiles[offset : offset + limit + 1]
        return pb.ListProfilesResponse(
            profiles=[self._message(p) for p in page[:limit]],
            next_page_token=next_page_token(offset, limit, len(page)),
        )

    async def GetProfile(
        self, request: pb.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProfileResponse:
        profile = await asyncio.to_thread(self._manager.get, request.name)
        return pb.GetProfileResponse(profile=self._message(profile))

    async def CreateProfile(
        self, request: pb.CreateProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateProfileResponse:
        profile = await asyncio.to_thread(
            self._manager.create,
            request.name,
            request.description,
            steering_convert.features(request.features) or None,
        )
        return pb.CreateProfileResponse(profile=self._message(profile))

    async def UpdateProfile(
        self, request: pb.UpdateProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateProfileResponse:
        description = request.description if request.HasField("description") else None
        features = steering_convert.features(request.features) if request.replace_features else None
        profile = await asyncio.to_thread(
            lambda: self._manager.update(request.name, description=description, features=features)
        )
        return pb.UpdateProfileResponse(profile=self._message(profile))

    async def DeleteProfile(
        self, request: pb.DeleteProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteProfileResponse:
        await asyncio.to_thread(self._manager.delete, request.name)
        return pb.DeleteProfileResponse()

    async def ActivateProfile(
        self, request: pb.ActivateProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.ActivateProfileResponse:
        profile = await asyncio.to_thread(self._manager.activate, request.name)
        return pb.ActivateProfileResponse(profile=self._message(profile))

    async def DeactivateProfile(
        self, request: pb.DeactivateProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeactivateProfileResponse:
        previous = await asyncio.to_thread(self._manager.deactivate)
        return pb.DeactivateProfileResponse(previous=previous or "")

    async def ExportProfile(
        self, request: pb.ExportProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportProfileResponse:
        text = await asyncio.to_thread(self._manager.export_json, request.name)
        return pb.ExportProfileResponse(json=text)

    async def ImportProfile(
        self, request: pb.ImportProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportProfileResponse:
        imported = await asyncio.to_thread(
            lambda: self._manager.import_json(
                request.json, overwrite=request.overwrite, force=request.force
            )
        )
        return pb.ImportProfileResponse(
            profile=self._message(imported.profile), mismatches=imported.mismatches
        )

    def _message(self, profile: Profile) -> pb.Profile:
        return profile_message(profile, active=self._manager.active_name() == profile.name)


def profile_message(profile: Profile, *, active: bool) -> pb.Profile:
    return pb.Profile(
        name=profile.name,
        description=profile.description,
        model=profile.model,
        sae=pb.ProfileSae(
            sae_id=profile.sae.sae_id,
            name=profile.sae.name,
            weights_sha256=profile.sae.weights_sha256,
            hook_name=profile.sae.hook_name,
            d_sae=profile.sae.d_sae,
        ),
        features=[steering_convert.feature_message(f) for f in profile.features],
        active=active,
        created_at_unix_ms=_unix_ms(profile.created_at),
        updated_at_unix_ms=_unix_ms(profile.updated_at),
    )


def _unix_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)
