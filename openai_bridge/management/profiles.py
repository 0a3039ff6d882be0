"""/api/v1/profiles: named steering sets, activation, and their portable JSON form.

Profile names never contain "/" (nor ":"), so `{name}` is one path segment and
the fixed paths (`deactivate`, `import`) cannot collide with a `{name}/<verb>`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from millm.v1 import profile_service_pb2 as ppb
from openai_bridge import proto_json
from openai_bridge.errors import invalid_request, validation_failure
from openai_bridge.management.common import PageSize, PageToken, attachment, created, given, paging
from openai_bridge.management.schemas import (
    ProfileCreateBody,
    ProfileImportBody,
    ProfileUpdateBody,
)
from openai_bridge.request_checks import loads_bounded
from openai_bridge.state import Management

router = APIRouter(prefix="/api/v1/profiles")


def _created(name: str, payload: dict[str, Any]) -> JSONResponse:
    return created(f"/api/v1/profiles/{name}", payload)


def update_profile_request(name: str, body: ProfileUpdateBody) -> ppb.UpdateProfileRequest:
    request = proto_json.message(ppb.UpdateProfileRequest, {"name": name, **given(body)})
    # A list, even an empty one, replaces the features; none keeps them.
    request.replace_features = body.features is not None
    return request


def is_profile_document(value: Any) -> bool:
    """The exported document itself (it has a `schema` key), not the `{"json": ...}` wrapper."""
    return isinstance(value, dict) and "schema" in value


@router.get("")
async def list_profiles(
    management: Management,
    page_size: PageSize = None,
    page_token: PageToken = None,
) -> JSONResponse:
    request = ppb.ListProfilesRequest(**paging(page_size, page_token))
    response = await management.unary(management.stubs.profiles.ListProfiles, request)
    return JSONResponse(proto_json.page(response.profiles, response.next_page_token))


@router.post("", status_code=201)
async def create_profile(body: ProfileCreateBody, management: Management) -> JSONResponse:
    request = proto_json.message(ppb.CreateProfileRequest, given(body))
    response = await management.unary(management.stubs.profiles.CreateProfile, request)
    return _created(response.profile.name, proto_json.to_json(response.profile))


@router.post("/deactivate")
async def deactivate_profile(management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.profiles.DeactivateProfile, ppb.DeactivateProfileRequest()
    )
    return JSONResponse(proto_json.to_json(response))


@router.post("/import", status_code=201)
async def import_profile(
    request: Request, management: Management, overwrite: bool = False, force: bool = False
) -> JSONResponse:
    """Takes the exported document itself (passed on verbatim; `overwrite` and `force`
    in the query) or `{"json": "<the document as a string>", "overwrite", "force"}`."""
    try:
        text = (await request.body()).decode("utf-8")
    except ValueError:
        raise invalid_request("The request body is not valid JSON.") from None
    value = loads_bounded(text, "The request body", "json")
    if is_profile_document(value):
        document = text
    else:
        try:
            wrapped = ProfileImportBody.model_validate(value)
        except ValidationError as exc:
            raise validation_failure(exc.errors()) from None
        document = wrapped.document
        overwrite = overwrite or wrapped.overwrite
        force = force or wrapped.force
    response = await management.unary(
        management.stubs.profiles.ImportProfile,
        ppb.ImportProfileRequest(json=document, overwrite=overwrite, force=force),
    )
    return _created(response.profile.name, proto_json.to_json(response))


@router.post("/{name}/activate")
async def activate_profile(name: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.profiles.ActivateProfile, ppb.ActivateProfileRequest(name=name)
    )
    return JSONResponse(proto_json.to_json(response.profile))


@router.get("/{name}/export", response_model=None)
async def export_profile(name: str, management: Management) -> Response:
    """The service's JSON, byte for byte, as a download."""
    response = await management.unary(
        management.stubs.profiles.ExportProfile, ppb.ExportProfileRequest(name=name)
    )
    headers = attachment(f"{name}.millm-profile.json", name)
    return Response(response.json, media_type="application/json", headers=headers)


@router.get("/{name}")
async def get_profile(name: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.profiles.GetProfile, ppb.GetProfileRequest(name=name)
    )
    return JSONResponse(proto_json.to_json(response.profile))


@router.patch("/{name}")
async def update_profile(
    name: str, body: ProfileUpdateBody, management: Management
) -> JSONResponse:
    response = await management.unary(
        management.stubs.profiles.UpdateProfile, update_profile_request(name, body)
    )
    return JSONResponse(proto_json.to_json(response.profile))


@router.delete("/{name}")
async def delete_profile(name: str, management: Management) -> JSONResponse:
    await management.unary(
        management.stubs.profiles.DeleteProfile, ppb.DeleteProfileRequest(name=name)
    )
    return JSONResponse({"name": name, "deleted": True})
