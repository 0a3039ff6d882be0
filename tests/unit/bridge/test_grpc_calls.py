"""The call helpers: deadlines from the one table, metadata on every call, errors decoded."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from millm.v1 import model_service_pb2 as mpb
from millm.v1 import model_service_pb2_grpc as mpb_grpc
from openai_bridge.errors import InferenceError
from openai_bridge.grpc_calls import ServiceCalls
from tests.fixtures.grpc_server import serving

SLOWER_THAN_THE_DEADLINE_S = 0.5


class SlowModels(mpb_grpc.ModelServiceServicer):
    """Every answer takes longer than the bridge's deadline; records the metadata."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    async def _slowly(self, context, response):
        self.metadata.append(dict(context.invocation_metadata() or ()))
        await asyncio.sleep(SLOWER_THAN_THE_DEADLINE_S)
        return response

    async def GetModel(self, request, context):
        return await self._slowly(context, mpb.GetModelResponse())

    async def LoadModel(self, request, context):
        return await self._slowly(context, mpb.LoadModelResponse(load_s=1.0))


@pytest.fixture
def slow_models():
    service = SlowModels()
    with serving(service) as address:
        yield service, ServiceCalls(address, api_key="k", timeout_s=0.1)


async def test_a_plain_call_gets_the_request_deadline(slow_models):
    _, calls = slow_models
    with pytest.raises(InferenceError) as caught:
        await calls.unary(calls.stubs.models.GetModel, mpb.GetModelRequest(id="m"))
    assert caught.value.grpc_code == grpc.StatusCode.DEADLINE_EXCEEDED
    await calls.close()


async def test_a_call_in_the_table_has_no_deadline_and_every_call_carries_the_metadata(
    slow_models,
):
    service, calls = slow_models
    response = await calls.unary(calls.stubs.models.LoadModel, mpb.LoadModelRequest(id="m"))
    assert response.load_s == 1.0
    assert service.metadata[0]["authorization"] == "Bearer k"
    assert "x-request-id" in service.metadata[0]
    await calls.close()
