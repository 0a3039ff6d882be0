"""Several inference services behind one bridge: the address list, and which service a
model id chooses (fake services on real gRPC servers; the real two-replica test is
tests/contract/test_bridge_scale_out.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.app import create_app
from openai_bridge.config import BridgeSettings
from openai_bridge.errors import InferenceError
from openai_bridge.grpc_calls import ServiceCalls
from openai_bridge.inference_client import InferenceClient
from openai_bridge.openai_api.millm import ModelChoice, choose_model
from openai_bridge.services import Services
from tests.conftest import free_port
from tests.fixtures.grpc_server import serving
from tests.unit.bridge.fakes import FakeInferenceService


def test_addresses_split_on_semicolons_and_keep_multi_address_targets(monkeypatch):
    monkeypatch.setenv("MILLM_INFERENCE_ADDRESSES", " ipv4:10.0.0.1:1,10.0.0.2:1 ;gpu2:50051; ")
    settings = BridgeSettings()
    assert settings.service_addresses == ["ipv4:10.0.0.1:1,10.0.0.2:1", "gpu2:50051"]
    monkeypatch.delenv("MILLM_INFERENCE_ADDRESSES")
    assert BridgeSettings(inference_address="a:1").service_addresses == ["a:1"]


def test_a_comma_outside_an_ipv4_target_is_refused_at_start():
    with pytest.raises(ValidationError, match="separate inference services with `;`"):
        BridgeSettings(inference_addresses="a:1,b:2")


def serving_model(model_id: str, state: int = pb.MODEL_STATE_READY) -> FakeInferenceService:
    fake = FakeInferenceService()
    fake.info = pb.GetServerInfoResponse(model_state=state, model=pb.ModelInfo(id=model_id))
    if state != pb.MODEL_STATE_READY:
        fake.info.ClearField("model")
        fake.info.retry_after_s = 7
    return fake


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def services(*fakes: FakeInferenceService, clock: Clock) -> Iterator[Services]:
    with contextlib.ExitStack() as stack:
        addresses = [stack.enter_context(serving(fake)) for fake in fakes]
        clients = [InferenceClient(ServiceCalls(a, timeout_s=2)) for a in addresses]
        yield Services(clients, refresh_s=10, clock=clock)


async def test_the_model_id_chooses_the_service_and_the_longest_id_wins():
    clock = Clock()
    with services(serving_model("org/m"), serving_model("org/m:q4"), clock=clock) as fleet:
        try:
            first, second = fleet.clients
            assert await choose_model(fleet, "org/m") == (first, ModelChoice("org/m"))
            assert await choose_model(fleet, "org/m:q4") == (second, ModelChoice("org/m:q4"))
            assert await choose_model(fleet, "org/m:q4:loud") == (
                second,
                ModelChoice("org/m:q4", "loud"),
            )
            assert await choose_model(fleet, "org/m:loud") == (first, ModelChoice("org/m", "loud"))
            assert await choose_model(fleet, "") == (first, ModelChoice(""))
        finally:
            await fleet.close()


async def test_a_miss_asks_again_so_a_new_model_is_found():
    clock = Clock()
    changing = serving_model("old")
    with services(serving_model("a"), changing, clock=clock) as fleet:
        try:
            assert (await choose_model(fleet, "old"))[0] is fleet.clients[1]
            changing.info.model.id = "new"
            clock.now = 0.5  # a miss within a second of the last survey trusts it
            with pytest.raises(InferenceError) as missed:
                await choose_model(fleet, "new")
            assert (missed.value.grpc_code, missed.value.reason) == (
                grpc.StatusCode.NOT_FOUND,
                "MODEL_NOT_FOUND",
            )
            clock.now = 2.0  # well within refresh_s, but a miss asks again
            assert (await choose_model(fleet, "new"))[0] is fleet.clients[1]
        finally:
            await fleet.close()


async def test_a_service_still_loading_makes_a_miss_retryable():
    clock = Clock()
    with services(
        serving_model("a"), serving_model("", pb.MODEL_STATE_LOADING), clock=clock
    ) as fleet:
        try:
            with pytest.raises(InferenceError) as raised:
                await choose_model(fleet, "b")
            assert (raised.value.grpc_code, raised.value.reason) == (
                grpc.StatusCode.UNAVAILABLE,
                "MODEL_LOADING",
            )
            assert raised.value.retry_after_s == 7
        finally:
            await fleet.close()


async def test_an_unreachable_service_is_routed_around_but_all_down_is_unreachable():
    clock = Clock()
    with serving(serving_model("a")) as live:
        down = f"127.0.0.1:{free_port()}"
        clients = [InferenceClient(ServiceCalls(a, timeout_s=2)) for a in (down, live)]
        fleet = Services(clients, clock=clock)
        try:
            assert (await choose_model(fleet, "a"))[0] is clients[1]
        finally:
            await fleet.close()
        alone = Services([clients[0], InferenceClient(ServiceCalls(down))], clock=clock)
        try:
            with pytest.raises(InferenceError) as raised:
                await choose_model(alone, "a")
            assert raised.value.reason == "SERVICE_UNREACHABLE"
        finally:
            await alone.close()


def test_models_lists_each_model_once_and_its_services_profiles():
    first, again, other = serving_model("m"), serving_model("m"), serving_model("n")
    with contextlib.ExitStack() as stack:
        addresses = ";".join(stack.enter_context(serving(f)) for f in (first, again, other))
        app = create_app(BridgeSettings(inference_addresses=addresses, api_key=""))
        with TestClient(app) as http:
            listed = http.get("/v1/models").json()
    # The fakes serve no ProfileService: the list holds the models alone.
    assert [m["id"] for m in listed["data"]] == ["m", "n"]


def test_health_describes_the_first_service_and_lists_them_all():
    ready, loading = serving_model("m"), serving_model("", pb.MODEL_STATE_LOADING)
    with serving(ready) as first, serving(loading) as second:
        down = f"127.0.0.1:{free_port()}"
        addresses = f"{first};{second};{down}"
        app = create_app(BridgeSettings(inference_addresses=addresses, api_key=""))
        with TestClient(app) as http:
            health = http.get("/health")
    assert health.status_code == 200
    assert health.json()["model"] == "m"
    assert health.json()["services"] == [
        {"address": first, "model_state": "READY", "model": "m"},
        {"address": second, "model_state": "LOADING", "model": None},
        {"address": down, "model_state": None, "model": None},
    ]
