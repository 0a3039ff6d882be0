"""GET /v1/models and /v1/models/{id}: answered from GetServerInfo, which never queues.

Where the bridge fronts several inference services the list is their union, each
model with the profiles its own service knows (one for each, in a shared database).

Each saved steering profile is listed as one more model, `<model>:<profile>`,
so that a client that can only pick a model (Open WebUI, LibreChat) can pick a
profile. Open WebUI gives the list 10 s and LibreChat 5 s, so the profiles get
at most `PROFILE_LIST_TIMEOUT_S`; if they fail or are late, the list still
answers with the model alone.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from millm.v1 import inference_service_pb2 as pb
from millm.v1 import profile_service_pb2 as ppb
from openai_bridge.errors import InferenceError
from openai_bridge.grpc_calls import ServiceCalls
from openai_bridge.openai_api import millm, translate
from openai_bridge.state import BridgeState, State

log = logging.getLogger(__name__)

router = APIRouter()

PROFILE_LIST_TIMEOUT_S = 2.0
PROFILE_PAGE_SIZE = 200


async def _served_models(state: BridgeState) -> list[tuple[ServiceCalls, pb.ModelInfo]]:
    """Every ready model, with the calls to its service; asked afresh each time, so
    listing the models is also how a client makes the bridge notice a change."""
    surveyed = await state.services.survey(max_age_s=0)
    # A model served by several entries (replicas also listed one by one, to manage
    # each through `X-Millm-Service`) is listed once, as the first: the one requests get.
    first: dict[str, tuple[ServiceCalls, pb.ModelInfo]] = {}
    for entry in surveyed:
        if entry.model is not None:
            first.setdefault(entry.model.id, (entry.client.calls, entry.model))
    return list(first.values())


async def _all_profile_names(management: ServiceCalls) -> list[str]:
    names: list[str] = []
    token = ""
    while True:
        request = ppb.ListProfilesRequest(page_size=PROFILE_PAGE_SIZE, page_token=token)
        response = await management.unary(management.stubs.profiles.ListProfiles, request)
        names.extend(p.name for p in response.profiles)
        token = response.next_page_token
        if not token:
            return names


async def _profile_names(management: ServiceCalls) -> list[str]:
    """Saved profile names; [] when the profiles cannot be read quickly."""
    try:
        return await asyncio.wait_for(
            _all_profile_names(management), timeout=PROFILE_LIST_TIMEOUT_S
        )
    except TimeoutError:
        log.warning("listing models without profiles: they took over %ss", PROFILE_LIST_TIMEOUT_S)
        return []
    except InferenceError as exc:
        # No profile service at all is normal for an older service; say so quietly.
        quiet = exc.grpc_code == grpc.StatusCode.UNIMPLEMENTED
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "listing models without profiles: %s",
            exc.message,
        )
        return []


@router.get("/v1/models")
async def list_models(state: State) -> JSONResponse:
    # One service's profiles are asked for beside its model, as they always were.
    early = (
        asyncio.ensure_future(_profile_names(state.calls)) if not state.services.several else None
    )
    try:
        models = await _served_models(state)
    except BaseException:
        if early is not None:
            early.cancel()
        raise
    if early is None:
        names = await asyncio.gather(*(_profile_names(calls) for calls, _ in models))
    elif models:
        names = [await early]
    else:
        early.cancel()
        names = []
    data = []
    for (_, model), profiles in zip(models, names, strict=True):
        data.append(translate.model_card(model))
        data.extend(translate.model_card(model, name) for name in profiles)
    return JSONResponse({"object": "list", "data": data})


# `:path` because model ids may contain "/" (Hub ids) and ":".
@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, state: State) -> JSONResponse:
    models = await _served_models(state)
    for _, model in models:
        if model.id == model_id:
            return JSONResponse(translate.model_card(model))
    for calls, model in models:
        profile = millm.split_model_id(model_id, model.id).profile
        if profile:
            # PROFILE_NOT_FOUND (404, `param` "model") when there is no such profile.
            with millm.client_names(millm.Extension(source="model")):
                request = ppb.GetProfileRequest(name=profile)
                await calls.unary(calls.stubs.profiles.GetProfile, request)
            return JSONResponse(translate.model_card(model, profile))
    raise InferenceError(
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        f"The model `{model_id}` does not exist or is not being served.",
        param="model",
    )
