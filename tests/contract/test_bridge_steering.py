"""Steering, profiles and monitoring end to end, and the OpenAI `millm` extension: scripted
SteeringService, ProfileService, MonitoringService and InferenceService on a real grpc.aio
server (with the real ErrorInterceptor), the real gRPC clients and app, served by real
uvicorn, driven over real HTTP, a real WebSocket and the official `openai` SDK."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator

import grpc
import httpx
import openai
import pytest
from websockets.asyncio.client import connect

from inference_service import errors as domain
from inference_service.interceptors import ErrorInterceptor
from millm.v1 import inference_service_pb2 as pb
from millm.v1 import inference_service_pb2_grpc as pb_grpc
from millm.v1 import monitoring_service_pb2 as monpb
from millm.v1 import monitoring_service_pb2_grpc as monpb_grpc
from millm.v1 import profile_service_pb2 as ppb
from millm.v1 import profile_service_pb2_grpc as ppb_grpc
from millm.v1 import steering_pb2 as stpb
from millm.v1 import steering_service_pb2 as sspb
from millm.v1 import steering_service_pb2_grpc as sspb_grpc
from openai_bridge.management import monitoring as monitoring_routes
from tests.contract.test_bridge_management import serve_bridge
from tests.fixtures.raw_websocket import RawWebSocket

MODEL = "smollm2"
D_SAE = 4608
CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Hi"}]
# Indented, key order of its own, a non-ASCII label and a trailing newline: the bridge
# must hand it out byte for byte.
EXPORTED = (
    '{\n  "schema": "millm.profile/v1",\n  "name": "yelling",\n  "description": "ALL CAPS",\n'
    '  "model": "smollm2",\n  "sae": {"name": "res-8", "weights_sha256": "ab", '
    '"hook_name": "blocks.8.hook_resid_post", "d_sae": 4608},\n'
    '  "features": [{"index": 123, "mode": "add", "strength": 40.0, "normalize": false, '
    '"label": "crié"}]\n}\n'
)


def feature(index: int, strength: float, mode: int = stpb.STEERING_MODE_ADD, **fields):
    return stpb.SteeringFeature(index=index, mode=mode, strength=strength, **fields)


def saved_profile(name: str, *features: stpb.SteeringFeature, **fields) -> ppb.Profile:
    return ppb.Profile(
        name=name,
        model=MODEL,
        sae=ppb.ProfileSae(
            sae_id="sae-res-8",
            name="res-8",
            weights_sha256="ab" * 32,
            hook_name="blocks.8.hook_resid_post",
            d_sae=D_SAE,
        ),
        features=features,
        created_at_unix_ms=1_700_000_000_000,
        updated_at_unix_ms=1_700_000_001_000,
        **fields,
    )


def token(position: int, token_id: int, text: str, value: float) -> stpb.TokenActivations:
    return stpb.TokenActivations(
        position=position,
        token_id=token_id,
        token=text,
        features=[stpb.FeatureActivation(index=123, value=value)],
        top=[
            stpb.FeatureActivation(index=7, value=9.5),
            stpb.FeatureActivation(index=123, value=value),
        ],
    )


def activation_frame(request_id: str) -> monpb.ActivationFrame:
    return monpb.ActivationFrame(
        request_id=request_id,
        source="generate",
        hook_name="blocks.8.hook_resid_post",
        tokens=[token(0, 1, "Hi", 0.5)],
        captured_at_unix_ms=1_700_000_002_000,
    )


class ScriptedCore(
    pb_grpc.InferenceServiceServicer,
    sspb_grpc.SteeringServiceServicer,
    ppb_grpc.ProfileServiceServicer,
    monpb_grpc.MonitoringServiceServicer,
):
    """A served model `smollm2` with an SAE of 4608 features and two saved profiles.

    A generation says "HELLO THERE" when steered and "hello there" with steering
    disabled, and returns activations (prompt with the first delta) when asked.
    Every request is recorded in `requests`; `failing[method]` makes a method raise.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: list = []
        self.failing: dict[str, BaseException] = {}
        self.profiles = {
            "calm": saved_profile("calm", feature(9, -20.0)),
            "yelling": saved_profile(
                "yelling", feature(123, 40.0, label="all caps"), description="ALL CAPS"
            ),
        }
        self.live = stpb.SteeringSet(enabled=True)
        self.active = ""
        self.config = monpb.MonitoringConfig(
            record_history=False, top_k=5, features=[1], history_frames=1000
        )
        self.monitor_requests: asyncio.Queue[monpb.MonitorRequest] = asyncio.Queue()
        # Frames to send; an exception is raised, None ends the call.
        self.monitor_frames: asyncio.Queue[monpb.MonitorResponse | BaseException | None] = (
            asyncio.Queue()
        )
        self.monitor_cancelled = asyncio.Event()
        self.monitor_started = asyncio.Event()

    def _enter(self, name: str, request) -> None:
        self.requests.append(request)
        if name in self.failing:
            raise self.failing[name]

    def _check_steering(self, steering: stpb.RequestSteering, where: str) -> None:
        source = steering.WhichOneof("source")
        if source == "profile" and steering.profile not in self.profiles:
            raise domain.ProfileNotFoundError(
                f"No profile named '{steering.profile}'.", param=f"{where}.profile"
            )
        if source == "features":
            self._check_features(steering.features.features, f"{where}.features")

    @staticmethod
    def _check_features(features, where: str) -> None:
        for n, f in enumerate(features):
            if f.index >= D_SAE:
                raise domain.InvalidArgumentError(
                    f"{where}[{n}].index {f.index} is out of range: the attached SAE has "
                    f"{D_SAE} features (0 to {D_SAE - 1}).",
                    param=f"{where}[{n}].index",
                )
            if not math.isfinite(f.strength):
                raise domain.InvalidArgumentError(
                    f"{where}[{n}].strength must be a finite number.",
                    param=f"{where}[{n}].strength",
                )

    # InferenceService

    async def Generate(self, request_iterator, context):
        start = (await anext(aiter(request_iterator))).start
        self._enter("Generate", start)
        self._check_steering(start.steering, "steering")
        if start.activations.top_k > 64:
            raise domain.InvalidArgumentError("top_k must be between 0 and 64.", param="top_k")
        steered = start.steering.WhichOneof("source") != "disabled"
        words = ["HELLO", " THERE"] if steered else ["hello", " there"]
        asked = start.HasField("activations")
        yield pb.GenerateResponse(
            accepted=pb.GenerateAccepted(request_id=f"g{len(self.requests)}", model=MODEL)
        )
        yield pb.GenerateResponse(
            delta=pb.TokenDelta(
                text=words[0],
                token_ids=[11],
                activations=[token(0, 1, "Hi", 0.25), token(1, 2, "!", 1.5)] if asked else [],
            )
        )
        yield pb.GenerateResponse(
            delta=pb.TokenDelta(
                text=words[1],
                token_ids=[12],
                activations=[token(2, 11, words[0], 3.0)] if asked else [],
            )
        )
        yield pb.GenerateResponse(
            finished=pb.GenerateFinished(
                finish_reason=pb.FINISH_REASON_STOP,
                usage=pb.Usage(prompt_tokens=2, completion_tokens=2),
            )
        )

    async def Embed(self, request, context):
        self._enter("Embed", request)
        self._check_steering(request.steering, "steering")
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=[0.5])], prompt_tokens=1, model=MODEL
        )

    async def GetServerInfo(self, request, context):
        self._enter("GetServerInfo", request)
        return pb.GetServerInfoResponse(
            model_state=pb.MODEL_STATE_READY,
            model=pb.ModelInfo(id=MODEL, loaded_at_unix_s=1_700_000_000),
        )

    # SteeringService

    def _state(self) -> sspb.SteeringState:
        effective = self.profiles[self.active].features if self.active else None
        return sspb.SteeringState(
            live=self.live,
            active_profile=self.active,
            effective=(
                stpb.SteeringSet(features=effective, enabled=True) if effective else self.live
            ),
            sae_id="sae-res-8",
            d_sae=D_SAE,
            max_activations={f.index: 52.5 for f in self.live.features},
        )

    async def GetSteering(self, request, context):
        self._enter("GetSteering", request)
        return sspb.GetSteeringResponse(state=self._state())

    async def SetSteering(self, request, context):
        self._enter("SetSteering", request)
        self._check_features(request.features, "features")
        enabled = request.enabled if request.HasField("enabled") else self.live.enabled
        self.live = stpb.SteeringSet(features=request.features, enabled=enabled)
        return sspb.SetSteeringResponse(state=self._state())

    async def ClearSteering(self, request, context):
        self._enter("ClearSteering", request)
        self.live = stpb.SteeringSet(enabled=self.live.enabled)
        return sspb.ClearSteeringResponse(state=self._state())

    async def SetSteeringEnabled(self, request, context):
        self._enter("SetSteeringEnabled", request)
        self.live = stpb.SteeringSet(features=self.live.features, enabled=request.enabled)
        return sspb.SetSteeringEnabledResponse(state=self._state())

    # ProfileService

    def _profile(self, name: str) -> ppb.Profile:
        if name not in self.profiles:
            raise domain.ProfileNotFoundError(f"No profile named '{name}'.", param="name")
        profile = ppb.Profile()
        profile.CopyFrom(self.profiles[name])
        profile.active = name == self.active
        return profile

    async def ListProfiles(self, request, context):
        self._enter("ListProfiles", request)
        names = sorted(self.profiles)
        return ppb.ListProfilesResponse(profiles=[self._profile(n) for n in names])

    async def GetProfile(self, request, context):
        self._enter("GetProfile", request)
        return ppb.GetProfileResponse(profile=self._profile(request.name))

    async def CreateProfile(self, request, context):
        self._enter("CreateProfile", request)
        features = request.features or self.live.features
        self.profiles[request.name] = saved_profile(
            request.name, *features, description=request.description
        )
        return ppb.CreateProfileResponse(profile=self._profile(request.name))

    async def UpdateProfile(self, request, context):
        self._enter("UpdateProfile", request)
        profile = self._profile(request.name)
        if request.HasField("description"):
            profile.description = request.description
        if request.replace_features:
            del profile.features[:]
            profile.features.extend(request.features)
        self.profiles[request.name] = profile
        return ppb.UpdateProfileResponse(profile=self._profile(request.name))

    async def DeleteProfile(self, request, context):
        self._enter("DeleteProfile", request)
        self._profile(request.name)
        del self.profiles[request.name]
        return ppb.DeleteProfileResponse()

    async def ActivateProfile(self, request, context):
        self._enter("ActivateProfile", request)
        self._profile(request.name)
        self.active = request.name
        return ppb.ActivateProfileResponse(profile=self._profile(request.name))

    async def DeactivateProfile(self, request, context):
        self._enter("DeactivateProfile", request)
        previous, self.active = self.active, ""
        return ppb.DeactivateProfileResponse(previous=previous)

    async def ExportProfile(self, request, context):
        self._enter("ExportProfile", request)
        self._profile(request.name)
        return ppb.ExportProfileResponse(json=EXPORTED)

    async def ImportProfile(self, request, context):
        self._enter("ImportProfile", request)
        document = json.loads(request.json)
        self.profiles[document["name"]] = saved_profile(document["name"], feature(123, 40.0))
        return ppb.ImportProfileResponse(
            profile=self._profile(document["name"]),
            mismatches=["model: made on smollm2, serving smollm2-360m"] if request.force else [],
        )

    # MonitoringService

    async def Monitor(self, request_iterator, context):
        self.requests.append("Monitor")

        async def read_requests() -> None:
            async for request in request_iterator:
                await self.monitor_requests.put(request)
                self.monitor_started.set()

        reader = asyncio.create_task(read_requests())
        try:
            await self.monitor_started.wait()
            if "Monitor" in self.failing:
                raise self.failing["Monitor"]
            while True:
                response = await self.monitor_frames.get()
                if response is None:
                    return
                if isinstance(response, BaseException):
                    raise response
                yield response
        except asyncio.CancelledError:
            self.monitor_cancelled.set()
            raise
        finally:
            reader.cancel()

    async def GetMonitoringConfig(self, request, context):
        self._enter("GetMonitoringConfig", request)
        return monpb.GetMonitoringConfigResponse(config=self.config, subscribers=2)

    async def SetMonitoringConfig(self, request, context):
        self._enter("SetMonitoringConfig", request)
        self.config = request.config
        return monpb.SetMonitoringConfigResponse(config=self.config)

    async def GetMonitoringHistory(self, request, context):
        self._enter("GetMonitoringHistory", request)
        return monpb.GetMonitoringHistoryResponse(frames=[activation_frame("g1")])

    async def GetFeatureStatistics(self, request, context):
        self._enter("GetFeatureStatistics", request)
        return monpb.GetFeatureStatisticsResponse(
            features=[
                monpb.FeatureStatistics(
                    index=i, count=3, min=0.5, max=4.0, mean=2.0, fraction_active=0.25
                )
                for i in request.features
            ],
            tokens=12,
        )

    async def ExportMonitoringHistory(self, request, context):
        self._enter("ExportMonitoringHistory", request)
        return monpb.ExportMonitoringHistoryResponse(
            data="request_id,position,index,value\ng1,0,123,0.5\n", content_type="text/csv"
        )

    async def ClearMonitoringHistory(self, request, context):
        self._enter("ClearMonitoringHistory", request)
        return monpb.ClearMonitoringHistoryResponse()


@pytest.fixture(scope="module")
async def core_server() -> AsyncIterator[tuple[ScriptedCore, str]]:
    servicer = ScriptedCore()
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    sspb_grpc.add_SteeringServiceServicer_to_server(servicer, server)
    ppb_grpc.add_ProfileServiceServicer_to_server(servicer, server)
    monpb_grpc.add_MonitoringServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture
async def bridge(core_server) -> AsyncIterator[tuple[ScriptedCore, httpx.AsyncClient, str]]:
    servicer, address = core_server
    servicer.reset()
    async with (
        serve_bridge(address) as host,
        httpx.AsyncClient(base_url=f"http://{host}") as http,
    ):
        yield servicer, http, host


def error(message: str, type_: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def starts(servicer: ScriptedCore) -> list[pb.GenerateStart]:
    return [r for r in servicer.requests if isinstance(r, pb.GenerateStart)]


# ---------------------------------------------------------------- /api/v1/steering


async def test_set_get_clear_and_switch_the_live_steering(bridge):
    servicer, http, _ = bridge
    body = {
        "features": [
            {"index": 123, "strength": 40.0, "label": "all caps"},
            {"index": 7, "mode": "clamp", "strength": 2.5, "normalize": True},
        ],
        "enabled": True,
    }
    put = await http.put("/api/v1/steering", json=body)
    assert servicer.requests[-1] == sspb.SetSteeringRequest(
        features=[
            feature(123, 40.0, label="all caps"),
            feature(7, 2.5, stpb.STEERING_MODE_CLAMP, normalize=True),
        ],
        enabled=True,
    )
    live = {
        "features": [
            {
                "index": 123,
                "mode": "add",
                "strength": 40.0,
                "normalize": False,
                "label": "all caps",
            },
            {"index": 7, "mode": "clamp", "strength": 2.5, "normalize": True, "label": None},
        ],
        "enabled": True,
    }
    assert put.status_code == 200
    assert put.json() == {
        "live": live,
        "active_profile": None,
        "effective": live,
        "sae_id": "sae-res-8",
        "d_sae": D_SAE,
        "max_activations": {"7": 52.5, "123": 52.5},
    }
    assert (await http.get("/api/v1/steering")).json() == put.json()

    disabled = (await http.post("/api/v1/steering/disable")).json()
    assert servicer.requests[-1] == sspb.SetSteeringEnabledRequest(enabled=False)
    assert disabled["live"]["enabled"] is False
    assert len(disabled["live"]["features"]) == 2
    enabled = (await http.post("/api/v1/steering/enable")).json()
    assert servicer.requests[-1] == sspb.SetSteeringEnabledRequest(enabled=True)
    assert enabled["live"]["enabled"] is True

    # Without `enabled` the switch is left as it is (the optional stays unset).
    await http.put("/api/v1/steering", json={"features": [{"index": 1, "strength": -3}]})
    assert not servicer.requests[-1].HasField("enabled")

    cleared = (await http.delete("/api/v1/steering")).json()
    assert servicer.requests[-1] == sspb.ClearSteeringRequest()
    assert cleared["live"] == {"features": [], "enabled": True}
    assert cleared["max_activations"] == {}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"features": [{"index": 1, "strength": 1, "mode": "scale"}]}, "features.0.mode"),
        ({"features": [{"index": -1, "strength": 1}]}, "features.0.index"),
        ({"features": [{"index": 1}]}, "features.0.strength"),
        ({"features": [], "enable": True}, "enable"),
        ({}, "features"),
    ],
)
async def test_bad_steering_bodies_are_400_before_any_call(bridge, body, param):
    servicer, http, _ = bridge
    response = await http.put("/api/v1/steering", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert servicer.requests == []


async def test_steering_errors_of_the_service_keep_their_param(bridge):
    servicer, http, _ = bridge
    out_of_range = await http.put(
        "/api/v1/steering", json={"features": [{"index": D_SAE, "strength": 1}]}
    )
    servicer.failing["GetSteering"] = domain.NoSaeAttachedError("Attach an SAE before steering.")
    no_sae = await http.get("/api/v1/steering")
    assert out_of_range.status_code == 400
    assert out_of_range.json() == error(
        f"features[0].index {D_SAE} is out of range: the attached SAE has {D_SAE} features "
        f"(0 to {D_SAE - 1}).",
        "invalid_request_error",
        "features[0].index",
        "invalid_value",
    )
    assert no_sae.status_code == 400
    assert no_sae.json() == error(
        "Attach an SAE before steering.", "invalid_request_error", None, "no_sae_attached"
    )


# ---------------------------------------------------------------- /api/v1/profiles


YELLING_JSON = {
    "name": "yelling",
    "description": "ALL CAPS",
    "model": MODEL,
    "sae": {
        "sae_id": "sae-res-8",
        "name": "res-8",
        "weights_sha256": "ab" * 32,
        "hook_name": "blocks.8.hook_resid_post",
        "d_sae": D_SAE,
    },
    "features": [
        {"index": 123, "mode": "add", "strength": 40.0, "normalize": False, "label": "all caps"}
    ],
    "active": False,
    "created_at_unix_ms": 1_700_000_000_000,
    "updated_at_unix_ms": 1_700_000_001_000,
}


async def test_list_get_activate_and_deactivate_profiles(bridge):
    servicer, http, _ = bridge
    listed = (await http.get("/api/v1/profiles", params={"page_size": 10})).json()
    assert servicer.requests[-1] == ppb.ListProfilesRequest(page_size=10)
    assert [p["name"] for p in listed["data"]] == ["calm", "yelling"]
    assert listed["next_page_token"] is None
    assert listed["data"][0]["description"] is None
    assert (await http.get("/api/v1/profiles/yelling")).json() == YELLING_JSON

    activated = (await http.post("/api/v1/profiles/yelling/activate")).json()
    assert servicer.requests[-1] == ppb.ActivateProfileRequest(name="yelling")
    assert activated == {**YELLING_JSON, "active": True}
    assert (await http.get("/api/v1/steering")).json()["active_profile"] == "yelling"
    deactivated = await http.post("/api/v1/profiles/deactivate")
    assert deactivated.json() == {"previous": "yelling"}
    assert (await http.post("/api/v1/profiles/deactivate")).json() == {"previous": None}


async def test_create_update_and_delete_a_profile(bridge):
    servicer, http, _ = bridge
    created = await http.post(
        "/api/v1/profiles",
        json={
            "name": "formal",
            "description": "Dear Sir",
            "features": [{"index": 5, "strength": 8}],
        },
    )
    assert servicer.requests[-1] == ppb.CreateProfileRequest(
        name="formal", description="Dear Sir", features=[feature(5, 8.0)]
    )
    assert created.status_code == 201
    assert created.headers["location"] == "/api/v1/profiles/formal"
    assert created.json()["features"][0]["index"] == 5

    # Without features the service saves the live steering: nothing is sent.
    await http.post("/api/v1/profiles", json={"name": "snapshot"})
    assert servicer.requests[-1] == ppb.CreateProfileRequest(name="snapshot")

    described = (await http.patch("/api/v1/profiles/formal", json={"description": "Madam"})).json()
    assert servicer.requests[-1] == ppb.UpdateProfileRequest(name="formal", description="Madam")
    assert (described["description"], len(described["features"])) == ("Madam", 1)
    emptied = (await http.patch("/api/v1/profiles/formal", json={"features": []})).json()
    assert servicer.requests[-1] == ppb.UpdateProfileRequest(name="formal", replace_features=True)
    assert emptied["features"] == []

    deleted = await http.delete("/api/v1/profiles/formal")
    assert deleted.json() == {"name": "formal", "deleted": True}
    missing = await http.delete("/api/v1/profiles/formal")
    assert missing.status_code == 404
    assert missing.json() == error(
        "No profile named 'formal'.", "not_found_error", "name", "profile_not_found"
    )


async def test_export_is_the_services_json_verbatim_as_a_download(bridge):
    servicer, http, _ = bridge
    response = await http.get("/api/v1/profiles/yelling/export")
    assert servicer.requests[-1] == ppb.ExportProfileRequest(name="yelling")
    assert response.status_code == 200
    assert response.content == EXPORTED.encode()
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == (
        'attachment; filename="yelling.millm-profile.json"'
    )
    assert (await http.get("/api/v1/profiles/nope/export")).status_code == 404


async def test_import_takes_the_document_or_the_wrapper(bridge):
    servicer, http, _ = bridge
    # The exported file as it is: passed on byte for byte; options in the query.
    bare = await http.post(
        "/api/v1/profiles/import",
        content=EXPORTED.encode(),
        params={"overwrite": "true"},
        headers={"content-type": "application/json"},
    )
    assert servicer.requests[-1] == ppb.ImportProfileRequest(json=EXPORTED, overwrite=True)
    assert bare.status_code == 201
    assert bare.headers["location"] == "/api/v1/profiles/yelling"
    assert bare.json()["mismatches"] == []
    assert bare.json()["profile"]["name"] == "yelling"

    wrapped = await http.post("/api/v1/profiles/import", json={"json": EXPORTED, "force": True})
    assert servicer.requests[-1] == ppb.ImportProfileRequest(json=EXPORTED, force=True)
    assert wrapped.json()["mismatches"] == ["model: made on smollm2, serving smollm2-360m"]

    calls = len(servicer.requests)
    not_json = await http.post("/api/v1/profiles/import", content=b"{nope")
    misspelt = await http.post("/api/v1/profiles/import", json={"jsn": EXPORTED})
    assert not_json.status_code == misspelt.status_code == 400
    assert not_json.json()["error"]["message"] == "The request body is not valid JSON."
    assert misspelt.json()["error"]["param"] == "json"
    assert len(servicer.requests) == calls


# ---------------------------------------------------------------- /api/v1/monitoring


async def test_monitoring_config_history_statistics_export_and_clear(bridge):
    servicer, http, _ = bridge
    got = (await http.get("/api/v1/monitoring/config")).json()
    assert got == {
        "record_history": False,
        "top_k": 5,
        "features": [1],
        "history_frames": 1000,
        "subscribers": 2,
    }
    # Unset fields keep their current values.
    put = await http.put(
        "/api/v1/monitoring/config", json={"record_history": True, "features": [4]}
    )
    assert servicer.requests[-1] == monpb.SetMonitoringConfigRequest(
        config=monpb.MonitoringConfig(
            record_history=True, top_k=5, features=[4], history_frames=1000
        )
    )
    assert put.json() == {
        "record_history": True,
        "top_k": 5,
        "features": [4],
        "history_frames": 1000,
    }

    history = await http.get("/api/v1/monitoring/history", params={"limit": 20, "request_id": "g1"})
    assert servicer.requests[-1] == monpb.GetMonitoringHistoryRequest(limit=20, request_id="g1")
    assert history.json() == {
        "data": [
            {
                "request_id": "g1",
                "source": "generate",
                "hook_name": "blocks.8.hook_resid_post",
                "tokens": [
                    {
                        "position": 0,
                        "token_id": 1,
                        "token": "Hi",
                        "features": [{"index": 123, "value": 0.5}],
                        "top": [{"index": 7, "value": 9.5}, {"index": 123, "value": 0.5}],
                        "unedited_features": [],
                    }
                ],
                "captured_at_unix_ms": 1_700_000_002_000,
            }
        ],
        "next_page_token": None,
    }

    stats = await http.get("/api/v1/monitoring/statistics?features=3,1&features=2&limit=5")
    assert servicer.requests[-1] == monpb.GetFeatureStatisticsRequest(features=[3, 1, 2], limit=5)
    assert (stats.json()["tokens"], stats.json()["next_page_token"]) == (12, None)
    assert stats.json()["data"][0] == {
        "index": 3,
        "count": 3,
        "min": 0.5,
        "max": 4.0,
        "mean": 2.0,
        "fraction_active": 0.25,
    }
    bad = await http.get("/api/v1/monitoring/statistics?features=1,x")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "features"

    exported = await http.get("/api/v1/monitoring/export", params={"format": "csv"})
    assert servicer.requests[-1] == monpb.ExportMonitoringHistoryRequest(format="csv")
    assert exported.text == "request_id,position,index,value\ng1,0,123,0.5\n"
    assert exported.headers["content-type"].startswith("text/csv")
    assert exported.headers["content-disposition"] == (
        'attachment; filename="monitoring-history.csv"'
    )
    assert (await http.get("/api/v1/monitoring/export?format=xml")).status_code == 400

    cleared = await http.delete("/api/v1/monitoring/history")
    assert servicer.requests[-1] == monpb.ClearMonitoringHistoryRequest()
    assert cleared.json() == {"cleared": True}


async def test_live_stream_relays_control_messages_and_frames(bridge):
    servicer, _, host = bridge
    async with connect(f"ws://{host}/api/v1/monitoring/stream") as ws:
        await ws.send(json.dumps({"features": [123, 7], "top_k": 3}))
        first = await asyncio.wait_for(servicer.monitor_requests.get(), timeout=5)
        assert first == monpb.MonitorRequest(features=[123, 7], top_k=3)

        servicer.monitor_frames.put_nowait(
            monpb.MonitorResponse(frame=activation_frame("g7"), dropped_frames=4)
        )
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=5))
        assert frame == {
            "type": "frame",
            "frame": {
                "request_id": "g7",
                "source": "generate",
                "hook_name": "blocks.8.hook_resid_post",
                "tokens": [
                    {
                        "position": 0,
                        "token_id": 1,
                        "token": "Hi",
                        "features": [{"index": 123, "value": 0.5}],
                        "top": [{"index": 7, "value": 9.5}, {"index": 123, "value": 0.5}],
                        "unedited_features": [],
                    }
                ],
                "captured_at_unix_ms": 1_700_000_002_000,
            },
            "dropped_frames": 4,
        }

        # A message changes only what it names.
        await ws.send(json.dumps({"paused": True}))
        paused = await asyncio.wait_for(servicer.monitor_requests.get(), timeout=5)
        assert paused == monpb.MonitorRequest(features=[123, 7], top_k=3, paused=True)
        await ws.send(json.dumps({"top_k": 0, "paused": False}))
        resumed = await asyncio.wait_for(servicer.monitor_requests.get(), timeout=5)
        assert resumed == monpb.MonitorRequest(features=[123, 7], top_k=0, paused=False)
    # Leaving cancels the gRPC call.
    await asyncio.wait_for(servicer.monitor_cancelled.wait(), timeout=5)


async def test_a_stalled_viewer_loses_frames_in_the_bridge_not_the_service(bridge):
    """A client that stops reading fills its socket; the bridge keeps reading the
    service's stream (the service never waits on it), drops what does not fit in its
    send queue, and adds those drops to the count the next frame carries."""
    servicer, _, host = bridge
    ws = await asyncio.to_thread(RawWebSocket, host, "/api/v1/monitoring/stream")
    ws.send_text(json.dumps({"top_k": 3}))
    await asyncio.wait_for(servicer.monitor_requests.get(), timeout=5)
    big = monpb.ActivationFrame(
        request_id="big",
        source="embed",
        hook_name="blocks.8.hook_resid_post",
        tokens=[token(i, 1, "word", 0.5) for i in range(4000)],  # ~0.5 MB of JSON
    )
    sent = 40
    for _ in range(sent):
        servicer.monitor_frames.put_nowait(monpb.MonitorResponse(frame=big, dropped_frames=0))
    # The bridge drains the service's stream although nobody reads the socket.
    for _ in range(100):
        if servicer.monitor_frames.empty():
            break
        await asyncio.sleep(0.1)
    assert servicer.monitor_frames.empty()
    await asyncio.sleep(0.5)
    received = 0
    with contextlib.suppress(TimeoutError):
        while True:
            frame = json.loads(await asyncio.to_thread(ws.recv_text, 2.0))
            assert frame["frame"]["request_id"] == "big"
            received += 1
    servicer.monitor_frames.put_nowait(
        monpb.MonitorResponse(frame=activation_frame("after"), dropped_frames=5)
    )
    last = json.loads(await asyncio.to_thread(ws.recv_text, 5.0))
    ws.close()
    assert last["frame"]["request_id"] == "after"
    dropped_in_bridge = last["dropped_frames"] - 5  # the service's own count comes on top
    assert dropped_in_bridge > 0 and received + dropped_in_bridge == sent


async def test_a_silent_viewer_starts_with_the_top_10(bridge, monkeypatch):
    servicer, _, host = bridge
    monkeypatch.setattr(monitoring_routes, "FIRST_MESSAGE_WAIT_S", 0.05)
    async with connect(f"ws://{host}/api/v1/monitoring/stream"):
        first = await asyncio.wait_for(servicer.monitor_requests.get(), timeout=5)
    assert first == monpb.MonitorRequest(top_k=10)


async def test_the_service_ending_the_stream_closes_with_1001(bridge):
    servicer, _, host = bridge
    async with connect(f"ws://{host}/api/v1/monitoring/stream") as ws:
        await ws.send(json.dumps({"top_k": 3}))
        await asyncio.wait_for(servicer.monitor_requests.get(), timeout=5)
        servicer.monitor_frames.put_nowait(monpb.MonitorResponse(frame=activation_frame("g1")))
        servicer.monitor_frames.put_nowait(None)
        frames = [json.loads(text) async for text in ws]
    assert [f["type"] for f in frames] == ["frame"]
    assert ws.close_code == 1001


async def test_bad_control_message_is_an_error_frame_and_1008(bridge):
    servicer, _, host = bridge
    async with connect(f"ws://{host}/api/v1/monitoring/stream") as ws:
        await ws.send(json.dumps({"top_k": 3}))
        await asyncio.wait_for(servicer.monitor_requests.get(), timeout=5)
        await ws.send(json.dumps({"features": ["x"]}))
        text = await asyncio.wait_for(ws.recv(), timeout=5)
        await ws.wait_closed()
    assert ws.close_code == 1008
    assert json.loads(text) == {
        "type": "error",
        "error": {
            "message": "Input should be a valid integer, unable to parse string as an integer "
            "(at `features.0`)",
            "type": "invalid_request_error",
            "param": "features.0",
            "code": "invalid_value",
        },
    }
    await asyncio.wait_for(servicer.monitor_cancelled.wait(), timeout=5)


async def test_service_error_on_the_stream_is_an_error_frame(bridge):
    servicer, _, host = bridge
    servicer.failing["Monitor"] = domain.NoSaeAttachedError("Attach an SAE to monitor.")
    async with connect(f"ws://{host}/api/v1/monitoring/stream") as ws:
        await ws.send(json.dumps({"top_k": 3}))
        text = await asyncio.wait_for(ws.recv(), timeout=5)
        await ws.wait_closed()
    assert ws.close_code == 1008
    assert json.loads(text)["error"] == {
        "message": "Attach an SAE to monitor.",
        "type": "invalid_request_error",
        "param": None,
        "code": "no_sae_attached",
    }


# ---------------------------------------------------------------- OpenAI: which steering


FEATURES = [{"index": 123, "mode": "multiply", "strength": 2.0, "label": "caps"}]
FEATURES_PB = stpb.RequestSteering(
    features=stpb.SteeringSet(
        features=[feature(123, 2.0, stpb.STEERING_MODE_MULTIPLY, label="caps")], enabled=True
    )
)


@pytest.mark.parametrize(
    ("model", "field", "steering", "response_model"),
    [
        pytest.param(MODEL, None, None, MODEL, id="global"),
        pytest.param(
            f"{MODEL}:yelling",
            None,
            stpb.RequestSteering(profile="yelling"),
            f"{MODEL}:yelling",
            id="model-id-profile",
        ),
        pytest.param(
            MODEL, {"profile": "calm"}, stpb.RequestSteering(profile="calm"), MODEL, id="profile"
        ),
        pytest.param(
            f"{MODEL}:yelling",
            {"profile": "calm"},
            stpb.RequestSteering(profile="calm"),
            f"{MODEL}:yelling",
            id="millm-profile-beats-model-id",
        ),
        pytest.param(
            f"{MODEL}:yelling",
            {"steering": FEATURES},
            FEATURES_PB,
            f"{MODEL}:yelling",
            id="millm-steering-beats-model-id",
        ),
        pytest.param(
            MODEL,
            {"steering": "off"},
            stpb.RequestSteering(disabled=True),
            MODEL,
            id="off",
        ),
        pytest.param(
            MODEL,
            {"steering": FEATURES, "steering_enabled": False},
            stpb.RequestSteering(
                features=stpb.SteeringSet(features=FEATURES_PB.features.features, enabled=False)
            ),
            MODEL,
            id="features-switched-off",
        ),
    ],
)
async def test_chat_request_steering_by_precedence(bridge, model, field, steering, response_model):
    servicer, http, _ = bridge
    body = {"model": model, "messages": USER, **({"millm": field} if field else {})}
    response = await http.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    (start,) = starts(servicer)
    assert start.model == MODEL
    if steering is None:
        assert not start.HasField("steering")
    else:
        assert start.steering == steering
    assert not start.HasField("activations")
    assert response.json()["model"] == response_model
    assert "millm" not in response.json()


async def test_completions_and_embeddings_take_the_same_steering(bridge):
    servicer, http, _ = bridge
    completion = await http.post(
        "/v1/completions",
        json={"model": f"{MODEL}:calm", "prompt": "Hi", "millm": {"steering": "off"}},
    )
    embedded = await http.post("/v1/embeddings", json={"model": f"{MODEL}:yelling", "input": "Hi"})
    by_field = await http.post(
        "/v1/embeddings", json={"model": MODEL, "input": "Hi", "millm": {"steering": FEATURES}}
    )
    (start,) = starts(servicer)
    assert start.prompt == "Hi" and start.steering == stpb.RequestSteering(disabled=True)
    assert completion.json()["model"] == f"{MODEL}:calm"
    assert completion.json()["choices"][0]["text"] == "hello there"
    embeds = [r for r in servicer.requests if isinstance(r, pb.EmbedRequest)]
    assert embeds[0].model == MODEL
    assert embeds[0].steering == stpb.RequestSteering(profile="yelling")
    assert embeds[1].steering == FEATURES_PB
    assert embedded.json()["model"] == f"{MODEL}:yelling"
    assert by_field.json()["model"] == MODEL


async def test_a_model_id_that_has_a_colon_is_not_split_unless_it_extends_the_served_id(bridge):
    servicer, http, _ = bridge
    response = await http.post(CHAT, json={"model": "other:yelling", "messages": USER})
    (start,) = starts(servicer)
    # Not `<served>:<profile>`: sent as it is, for the service to refuse or accept.
    assert start.model == "other:yelling"
    assert not start.HasField("steering")
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("millm", "param"),
    [
        ({"steering": [{"index": 1, "strength": "lots"}]}, "millm.steering[0].strength"),
        ({"steering": [{"index": 1, "strength": 1, "mode": "scale"}]}, "millm.steering[0].mode"),
        ({"steering": [{"index": -1, "strength": 1}]}, "millm.steering[0].index"),
        ({"steering": [{"index": 1, "strength": 1, "weight": 2}]}, "millm.steering[0].weight"),
        ({"steering": "on"}, "millm.steering"),
        ({"steering": {"index": 1, "strength": 1}}, "millm.steering"),
        ({"profile": "calm", "steering": "off"}, "millm.steering"),
        ({"profile": ""}, "millm.profile"),
        ({"steering_enabled": True}, "millm.steering_enabled"),
        ({"steerng": FEATURES}, "millm.steerng"),
        ({"activations": {}}, "millm.activations"),
        ({"activations": {"features": [1, "x"]}}, "millm.activations.features[1]"),
        ({"activations": {"top_k": -1}}, "millm.activations.top_k"),
        ({"compare": "maybe"}, "millm.compare"),
    ],
)
async def test_bad_millm_fields_are_400_with_param(bridge, millm, param):
    servicer, http, _ = bridge
    response = await http.post(CHAT, json={"model": MODEL, "messages": USER, "millm": millm})
    assert response.status_code == 400, response.text
    body = response.json()["error"]
    assert (body["param"], body["type"]) == (param, "invalid_request_error")
    assert starts(servicer) == []


async def test_millm_field_errors_have_exact_envelopes(bridge):
    _, http, _ = bridge
    both = await http.post(
        CHAT,
        json={"model": MODEL, "messages": USER, "millm": {"profile": "calm", "steering": "off"}},
    )
    not_an_object = await http.post(CHAT, json={"model": MODEL, "messages": USER, "millm": 5})
    streamed_compare = await http.post(
        CHAT, json={"model": MODEL, "messages": USER, "stream": True, "millm": {"compare": True}}
    )
    embed_activations = await http.post(
        "/v1/embeddings", json={"input": "Hi", "millm": {"activations": {"top_k": 3}}}
    )
    assert both.json() == error(
        "Give `millm.profile` or `millm.steering`, not both.",
        "invalid_request_error",
        "millm.steering",
        "invalid_value",
    )
    assert not_an_object.status_code == 400
    assert not_an_object.json()["error"]["param"] == "millm"
    assert streamed_compare.json() == error(
        "`millm.compare` returns both completions in one response, so it needs `stream` to "
        "be false.",
        "invalid_request_error",
        "millm.compare",
        "unsupported",
    )
    assert embed_activations.json() == error(
        "`millm.activations` is not supported by embeddings.",
        "invalid_request_error",
        "millm.activations",
        "unsupported",
    )


async def test_unknown_profile_is_404_naming_the_field_that_chose_it(bridge):
    _, http, _ = bridge
    by_model = await http.post(CHAT, json={"model": f"{MODEL}:nope", "messages": USER})
    by_field = await http.post(
        CHAT, json={"model": MODEL, "messages": USER, "millm": {"profile": "nope"}}
    )
    embed = await http.post("/v1/embeddings", json={"model": f"{MODEL}:nope", "input": "Hi"})
    assert by_model.status_code == by_field.status_code == embed.status_code == 404
    assert by_model.json() == error(
        "No profile named 'nope'.", "not_found_error", "model", "profile_not_found"
    )
    assert by_field.json()["error"]["param"] == "millm.profile"
    assert embed.json()["error"]["param"] == "model"


async def test_service_steering_errors_name_the_millm_field(bridge):
    _, http, _ = bridge
    response = await http.post(
        CHAT,
        json={
            "model": MODEL,
            "messages": USER,
            "millm": {"steering": [FEATURES[0], {"index": D_SAE, "strength": 1}]},
        },
    )
    top_k = await http.post(
        CHAT, json={"model": MODEL, "messages": USER, "millm": {"activations": {"top_k": 65}}}
    )
    assert response.status_code == 400
    assert response.json() == error(
        f"millm.steering[1].index {D_SAE} is out of range: the attached SAE has {D_SAE} features "
        f"(0 to {D_SAE - 1}).",
        "invalid_request_error",
        "millm.steering[1].index",
        "invalid_value",
    )
    assert top_k.json() == error(
        "top_k must be between 0 and 64.",
        "invalid_request_error",
        "millm.activations.top_k",
        "invalid_value",
    )


# ---------------------------------------------------------------- OpenAI: activations, compare


def token_json(position: int, token_id: int, text: str, value: float) -> dict:
    return {
        "position": position,
        "token_id": token_id,
        "token": text,
        "features": [{"index": 123, "value": value}],
        "top": [{"index": 7, "value": 9.5}, {"index": 123, "value": value}],
        "unedited_features": [],
    }


async def test_activations_come_with_a_non_streamed_chat_completion(bridge):
    servicer, http, _ = bridge
    response = await http.post(
        CHAT,
        json={
            "model": MODEL,
            "messages": USER,
            "millm": {"activations": {"features": [123], "top_k": 2}},
        },
    )
    (start,) = starts(servicer)
    assert start.activations == stpb.ActivationRequest(features=[123], top_k=2)
    assert not start.HasField("steering")
    assert response.json() == {
        "id": "chatcmpl-g1",
        "object": "chat.completion",
        "created": response.json()["created"],
        "model": MODEL,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "HELLO THERE",
                    "tool_calls": None,
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 2,
            "completion_tokens": 2,
            "total_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
        "millm": {
            "activations": [
                token_json(0, 1, "Hi", 0.25),
                token_json(1, 2, "!", 1.5),
                token_json(2, 11, "HELLO", 3.0),
            ]
        },
    }


async def test_streamed_chunks_carry_their_deltas_activations(bridge):
    _, http, _ = bridge
    response = await http.post(
        "/v1/completions",
        json={
            "model": MODEL,
            "prompt": "Hi",
            "stream": True,
            "stream_options": {"include_usage": True},
            "millm": {"activations": {"top_k": 2}},
        },
    )
    events = [line for line in response.text.split("\n\n") if line]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert events[-1] == "data: [DONE]"
    assert [c["choices"][0]["text"] if c["choices"] else None for c in chunks] == [
        "HELLO",
        " THERE",
        "",
        None,
    ]
    assert chunks[0]["millm"] == {
        "activations": [token_json(0, 1, "Hi", 0.25), token_json(1, 2, "!", 1.5)]
    }
    assert chunks[1]["millm"] == {"activations": [token_json(2, 11, "HELLO", 3.0)]}
    assert "millm" not in chunks[2] and "millm" not in chunks[3]
    # Exact bytes of one chunk: the extension key comes after the OpenAI ones.
    created = chunks[1]["created"]
    assert events[1] == (
        f'data: {{"id":"cmpl-g1","object":"text_completion","created":{created},'
        '"model":"smollm2","system_fingerprint":null,"choices":[{"text":" THERE","index":0,'
        '"logprobs":null,"finish_reason":null}],"usage":null,"millm":{"activations":[{'
        '"position":2,"token_id":11,"token":"HELLO","features":[{"index":123,"value":3.0}],'
        '"top":[{"index":7,"value":9.5},{"index":123,"value":3.0}],"unedited_features":[]}]}}'
    )


async def test_compare_runs_an_unsteered_twin_with_the_same_sampling(bridge):
    servicer, http, _ = bridge
    response = await http.post(
        CHAT,
        json={
            "model": f"{MODEL}:yelling",
            "messages": USER,
            "temperature": 0.7,
            "max_tokens": 8,
            "millm": {"compare": True, "activations": {"top_k": 2}},
        },
    )
    steered, unsteered = starts(servicer)
    assert steered.steering == stpb.RequestSteering(profile="yelling")
    assert unsteered.steering == stpb.RequestSteering(disabled=True)
    assert steered.activations == stpb.ActivationRequest(top_k=2)
    assert not unsteered.HasField("activations")
    # The same sampling, including a seed the bridge chose so both draw alike.
    assert steered.sampling.HasField("seed")
    assert unsteered.sampling == steered.sampling
    assert (steered.sampling.max_tokens, round(steered.sampling.temperature, 3)) == (8, 0.7)
    assert unsteered.chat == steered.chat and unsteered.model == steered.model == MODEL

    body = response.json()
    assert body["choices"][0]["message"]["content"] == "HELLO THERE"
    assert body["millm"]["default"] == {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "hello there",
                    "tool_calls": None,
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 2,
            "completion_tokens": 2,
            "total_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
    assert len(body["millm"]["activations"]) == 3


async def test_compare_keeps_a_seed_the_client_gave(bridge):
    servicer, http, _ = bridge
    response = await http.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "Hi", "seed": 16, "millm": {"compare": True}},
    )
    steered, unsteered = starts(servicer)
    assert steered.sampling.seed == unsteered.sampling.seed == 16
    assert response.json()["choices"][0]["text"] == "HELLO THERE"
    assert response.json()["millm"] == {
        "default": {
            "choices": [
                {"text": "hello there", "index": 0, "logprobs": None, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": 2,
                "completion_tokens": 2,
                "total_tokens": 4,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        }
    }


# ---------------------------------------------------------------- /v1/models


async def test_models_list_each_profile_as_an_alias(bridge):
    servicer, http, _ = bridge
    listed = (await http.get("/v1/models")).json()
    assert listed == {
        "object": "list",
        "data": [
            {"id": MODEL, "object": "model", "created": 1_700_000_000, "owned_by": "millm"},
            {
                "id": f"{MODEL}:calm",
                "object": "model",
                "created": 1_700_000_000,
                "owned_by": "millm",
            },
            {
                "id": f"{MODEL}:yelling",
                "object": "model",
                "created": 1_700_000_000,
                "owned_by": "millm",
            },
        ],
    }
    alias = await http.get(f"/v1/models/{MODEL}:yelling")
    missing = await http.get(f"/v1/models/{MODEL}:nope")
    assert alias.json()["id"] == f"{MODEL}:yelling"
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "model"

    servicer.failing["ListProfiles"] = domain.UnavailableError("The database is down.")
    degraded = (await http.get("/v1/models")).json()
    assert [m["id"] for m in degraded["data"]] == [MODEL]


# ---------------------------------------------------------------- the official SDK


async def test_openai_sdk_sends_extra_body_and_reads_model_extra(bridge):
    servicer, _, host = bridge
    sdk = openai.AsyncOpenAI(base_url=f"http://{host}/v1", api_key="unused", max_retries=0)
    async with sdk:
        models = [m.id async for m in sdk.models.list()]
        completion = await sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            extra_body={
                "millm": {
                    "steering": FEATURES,
                    "activations": {"features": [123]},
                    "compare": True,
                }
            },
        )
        stream = await sdk.chat.completions.create(
            model=f"{MODEL}:yelling",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            extra_body={"millm": {"activations": {"top_k": 2}}},
        )
        chunks = [chunk async for chunk in stream]
        with pytest.raises(openai.NotFoundError) as missing:
            await sdk.chat.completions.create(
                model=f"{MODEL}:nope", messages=[{"role": "user", "content": "Hi"}]
            )
        with pytest.raises(openai.BadRequestError) as bad:
            await sdk.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Hi"}],
                extra_body={"millm": {"steering": [{"index": 1, "strength": "x"}]}},
            )

    assert models == [MODEL, f"{MODEL}:calm", f"{MODEL}:yelling"]
    steered_start = starts(servicer)[0]
    assert steered_start.steering == FEATURES_PB
    assert completion.choices[0].message.content == "HELLO THERE"
    extension = completion.model_extra["millm"]
    assert [t["position"] for t in extension["activations"]] == [0, 1, 2]
    assert extension["default"]["choices"][0]["message"]["content"] == "hello there"

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "HELLO THERE"
    assert chunks[0].model == f"{MODEL}:yelling"
    carrying = [c.model_extra["millm"]["activations"] for c in chunks if c.model_extra.get("millm")]
    assert [[t["position"] for t in a] for a in carrying] == [[0, 1], [2]]

    assert missing.value.code == "profile_not_found" and missing.value.param == "model"
    assert bad.value.param == "millm.steering[0].strength"
