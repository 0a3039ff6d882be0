"""WebSocket /api/v1/operations/{id}/watch: snapshot frames, close codes, auth, disconnects."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from millm.v1 import operation_pb2 as opb
from openai_bridge.app import create_app
from openai_bridge.errors import InferenceError
from openai_bridge.middleware import ApiKeyMiddleware
from tests.unit.bridge.management_fakes import HANG, not_found, operation

WATCH = "/api/v1/operations/op-1/watch"


@pytest.fixture
def client_for(settings_for):
    def client(api_key: str = "") -> TestClient:
        return TestClient(create_app(settings_for(api_key=api_key)))

    return client


def receive_all(ws) -> tuple[list[dict], int]:
    """Frames until the server closes; returns them and the close code."""
    frames = []
    while True:
        message = ws.receive()
        if message["type"] == "websocket.close":
            return frames, message["code"]
        frames.append(json.loads(message["text"]))


def test_watch_sends_snapshots_and_closes_after_the_final_one(management, client_for):
    management.watch_script = [
        operation(opb.OPERATION_STATE_PENDING, bytes_done=0),
        operation(bytes_done=2000, eta_s=4.0),
        operation(opb.OPERATION_STATE_SUCCEEDED, bytes_done=4000, finished_at_unix_ms=5),
    ]
    with client_for().websocket_connect(WATCH) as ws:
        frames, code = receive_all(ws)
    assert code == 1000
    assert [f["type"] for f in frames] == ["operation"] * 3
    assert [f["operation"]["state"] for f in frames] == ["pending", "running", "succeeded"]
    assert [f["operation"]["eta_s"] for f in frames] == [None, 4.0, None]
    assert frames[-1]["operation"]["done"] is True
    assert management.calls == [("watch_operation", "op-1")]


def test_first_frame_exact_bytes(management, client_for):
    management.watch_script = [operation(opb.OPERATION_STATE_CANCELLED, finished_at_unix_ms=9)]
    with client_for().websocket_connect(WATCH) as ws:
        text = ws.receive_text()
        assert ws.receive()["code"] == 1000
    assert text == (
        '{"type":"operation","operation":{"id":"op-1","kind":"model_download",'
        '"state":"cancelled","done":true,"stage":"downloading",'
        '"target":"HuggingFaceTB/SmolLM2-135M-Instruct","bytes_done":1000,"bytes_total":4000,'
        '"bytes_per_s":500.0,"eta_s":null,"error_message":null,"error_reason":null,'
        '"created_at_unix_ms":1700000000000,"updated_at_unix_ms":1700000001000,'
        '"finished_at_unix_ms":9}}'
    )


def test_unknown_operation_sends_an_error_and_closes_1008(management, client_for):
    management.watch_script = [not_found("operation")]
    with client_for().websocket_connect("/api/v1/operations/nope/watch") as ws:
        frames, code = receive_all(ws)
    assert code == 1008
    assert frames == [
        {
            "type": "error",
            "error": {
                "message": "No such operation.",
                "type": "not_found_error",
                "param": None,
                "code": None,
            },
        }
    ]


def test_error_mid_watch_closes_1011(management, client_for):
    management.watch_script = [
        operation(),
        InferenceError(grpc.StatusCode.UNAVAILABLE, "SERVICE_UNREACHABLE", "Gone."),
    ]
    with client_for().websocket_connect(WATCH) as ws:
        frames, code = receive_all(ws)
    assert code == 1011
    assert [f["type"] for f in frames] == ["operation", "error"]
    assert frames[1]["error"]["code"] == "service_unreachable"


def test_unexpected_exception_is_a_safe_internal_error(management, client_for):
    management.watch_script = [RuntimeError("secret internals")]
    with client_for().websocket_connect(WATCH) as ws:
        frames, code = receive_all(ws)
    assert code == 1011
    assert frames[0]["error"]["type"] == "server_error"
    assert "secret" not in frames[0]["error"]["message"]


def test_client_leaving_cancels_the_watch(management, client_for):
    management.watch_script = [operation(), HANG]
    with client_for().websocket_connect(WATCH) as ws:
        assert json.loads(ws.receive_text())["type"] == "operation"
        deadline = time.monotonic() + 5
        while not management.watch_hanging.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        ws.close()
    deadline = time.monotonic() + 5
    while not management.watch_cancelled.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert management.watch_cancelled.is_set()


@pytest.mark.parametrize(
    "how",
    [
        # base64url("k") is "aw": the browser's way, as a subprotocol.
        {"subprotocols": ["millm.v1", "millm.key.aw"]},
        {"headers": {"authorization": "Bearer k"}},
    ],
)
def test_watch_accepts_the_key_as_subprotocol_or_header(management, client_for, how):
    management.watch_script = [operation(opb.OPERATION_STATE_SUCCEEDED)]
    with client_for(api_key="k").websocket_connect(WATCH, **how) as ws:
        frames, code = receive_all(ws)
    assert (len(frames), code) == (1, 1000)


@pytest.mark.parametrize("url", [WATCH, f"{WATCH}?api_key=wrong"])
def test_watch_without_the_key_is_denied_with_401_json(management, client_for, url):
    http = client_for(api_key="k")
    with pytest.raises(WebSocketDenialResponse) as caught, http.websocket_connect(url):
        pass
    assert caught.value.status_code == 401
    assert caught.value.json()["error"]["code"] == "invalid_api_key"
    assert not management.calls


async def test_watch_without_the_key_closes_1008_where_denial_is_unsupported():
    """An ASGI server without the `websocket.http.response` extension gets close 1008."""
    reached: list[dict] = []

    async def inner(scope, receive, send):
        reached.append(scope)

    sent: list[dict] = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "websocket", "path": WATCH, "query_string": b"", "headers": []}
    await ApiKeyMiddleware(inner, api_key="k")(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": ""}]
    assert not reached
