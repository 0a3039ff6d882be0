"""/api/v1/steering: the global live steering every request follows unless it brings its own."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from millm.v1 import steering_service_pb2 as stpb
from openai_bridge.management import steering_translate as translate
from openai_bridge.management.schemas import SteeringBody
from openai_bridge.state import Management

router = APIRouter(prefix="/api/v1/steering")


@router.get("")
async def get_steering(management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.steering.GetSteering, stpb.GetSteeringRequest()
    )
    return JSONResponse(translate.steering_state(response.state))


@router.put("")
async def set_steering(body: SteeringBody, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.steering.SetSteering, translate.set_steering_request(body)
    )
    return JSONResponse(translate.steering_state(response.state))


@router.delete("")
async def clear_steering(management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.steering.ClearSteering, stpb.ClearSteeringRequest()
    )
    return JSONResponse(translate.steering_state(response.state))


@router.post("/enable")
async def enable_steering(management: Management) -> JSONResponse:
    request = stpb.SetSteeringEnabledRequest(enabled=True)
    response = await management.unary(management.stubs.steering.SetSteeringEnabled, request)
    return JSONResponse(translate.steering_state(response.state))


@router.post("/disable")
async def disable_steering(management: Management) -> JSONResponse:
    request = stpb.SetSteeringEnabledRequest(enabled=False)
    response = await management.unary(management.stubs.steering.SetSteeringEnabled, request)
    return JSONResponse(translate.steering_state(response.state))
