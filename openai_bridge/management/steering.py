"""/api/v1/steering: the global live steering every request follows unless it brings its own."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from millm.v1 import steering_service_pb2 as stpb
from openai_bridge import proto_json
from openai_bridge.management.common import given
from openai_bridge.management.schemas import SteeringBody
from openai_bridge.state import Management

router = APIRouter(prefix="/api/v1/steering")


@router.get("")
async def get_steering(management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.steering.GetSteering, stpb.GetSteeringRequest()
    )
    return JSONResponse(proto_json.to_json(response.state))


@router.put("")
async def set_steering(body: SteeringBody, management: Management) -> JSONResponse:
    request = proto_json.message(stpb.SetSteeringRequest, given(body))
    response = await management.unary(management.stubs.steering.SetSteering, request)
    return JSONResponse(proto_json.to_json(response.state))


@router.delete("")
async def clear_steering(management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.steering.ClearSteering, stpb.ClearSteeringRequest()
    )
    return JSONResponse(proto_json.to_json(response.state))


@router.post("/enable")
async def enable_steering(management: Management) -> JSONResponse:
    request = stpb.SetSteeringEnabledRequest(enabled=True)
    response = await management.unary(management.stubs.steering.SetSteeringEnabled, request)
    return JSONResponse(proto_json.to_json(response.state))


@router.post("/disable")
async def disable_steering(management: Management) -> JSONResponse:
    request = stpb.SetSteeringEnabledRequest(enabled=False)
    response = await management.unary(management.stubs.steering.SetSteeringEnabled, request)
    return JSONResponse(proto_json.to_json(response.state))
