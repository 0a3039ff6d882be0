"""Browser-origin defence and key handling of the real app: other origins' pages may not
change state or open WebSockets, JSON routes want a JSON content type, WebSockets take
the key as a subprotocol (never in the URL), and no key reaches the logs."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from inference_service.interceptors import AuthInterceptor
from openai_bridge.logs import REDACTED, install_redaction
from tests.contract.conftest import bridge_for
from tests.contract.test_bridge_management import (
    ScriptedManagement,
    read_until_closed,
    serve_bridge,
)
from tests.contract.test_bridge_management import management_server as _management_server

management_server = _management_server  # the same module-scoped scripted service

OWN = "http://bridge"  # bridge_for's base URL: the Host the app sees
ALLOWED = "http://app.example:3000"
EVIL = "http://evil.example"
KEY = "sk-origin-secret-4242"
WATCH = "/api/v1/operations/op-1/watch"
# Body-less and unconfigured: answered 501 by the route itself, so any other status
# comes from the guards in front of it.
DISABLE = "/api/v1/steering/disable"


def key_subprotocol(key: str) -> str:
    return "millm.key." + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


@pytest.fixture
async def http(scripted_server) -> AsyncIterator[httpx.AsyncClient]:
    _, address = scripted_server
    client, inference = bridge_for(address, cors_origins=[ALLOWED])
    async with client:
        yield client
    await inference.close()


async def test_another_origins_state_change_is_refused_403(http):
    refused = await http.post(DISABLE, headers={"origin": EVIL, "content-type": "text/plain"})
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "message": f"Pages from {EVIL} may not change this server's state or open its"
        " WebSockets; list the origin in MILLM_CORS_ORIGINS to allow them.",
        "type": "permission_error",
        "param": None,
        "code": "origin_refused",
    }
    # Under /v1 too, and the same server under another name is another origin.
    chat = await http.post("/v1/chat/completions", json={}, headers={"origin": "http://Bridge:80"})
    assert chat.status_code == 403


@pytest.mark.parametrize("headers", [{"origin": OWN}, {"origin": ALLOWED}, {}])
async def test_own_listed_or_no_origin_passes(http, headers):
    response = await http.post(DISABLE, headers=headers)  # no body, no content type
    assert response.status_code == 501, response.text


async def test_reads_are_left_to_cors(http):
    response = await http.get("/api/v1/steering", headers={"origin": EVIL})
    assert response.status_code == 501


async def test_star_allows_every_origin(scripted_server):
    _, address = scripted_server
    client, inference = bridge_for(address, cors_origins=["*"])
    async with client:
        response = await client.post(DISABLE, headers={"origin": EVIL})
    await inference.close()
    assert response.status_code == 501


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
async def test_a_json_route_wants_a_json_content_type(http, content_type):
    headers = {"content-type": content_type} if content_type else {}
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    response = await http.post("/v1/chat/completions", content=body, headers=headers)
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["param"] == "Content-Type"
    assert error["code"] == "unsupported_media_type"
    assert "`Content-Type: application/json`" in error["message"]


async def test_json_and_plus_json_pass_the_content_type_check(http):
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        response = await http.put(
            "/api/v1/steering", content=b"{}", headers={"content-type": content_type}
        )
        assert response.status_code not in (403, 415), response.text


@pytest.mark.parametrize(
    "path",
    ["/api/v1/training/corpora?name=c.txt", "/api/v1/profiles/import"],
)
async def test_raw_body_routes_take_any_content_type(http, path):
    response = await http.post(path, content=b"raw text", headers={"content-type": "text/plain"})
    assert response.status_code not in (403, 415), response.text


# ---------------------------------------------------------------- WebSockets, key, docs


@pytest.fixture
async def host(management_server) -> AsyncIterator[str]:
    servicer: ScriptedManagement = management_server[0]
    servicer.reset()
    async with serve_bridge(management_server[1]) as served:
        yield served


@pytest.fixture
async def keyed_host(management_server) -> AsyncIterator[str]:
    management_server[0].reset()
    async with serve_bridge(management_server[1], api_key=KEY) as served:
        yield served


async def test_a_websocket_from_another_origin_is_refused_before_accept(host):
    with pytest.raises(InvalidStatus) as caught:
        async with connect(f"ws://{host}{WATCH}", origin=EVIL):
            pass
    assert caught.value.response.status_code == 403
    assert json.loads(caught.value.response.body)["error"]["code"] == "origin_refused"
    async with connect(f"ws://{host}{WATCH}", origin=f"http://{host}") as ws:
        frames = await read_until_closed(ws)
    assert frames[-1]["operation"]["state"] == "succeeded"


async def test_the_key_travels_as_a_subprotocol_and_only_millm_v1_is_selected(keyed_host):
    url = f"ws://{keyed_host}{WATCH}"
    async with connect(url, subprotocols=["millm.v1", key_subprotocol(KEY)]) as ws:
        selected = ws.subprotocol
        frames = await read_until_closed(ws)
    assert selected == "millm.v1"
    assert frames[-1]["operation"]["state"] == "succeeded"
    # Bearer stays for clients that can set headers; it needs no subprotocol.
    async with connect(url, additional_headers={"authorization": f"Bearer {KEY}"}) as ws:
        assert ws.subprotocol is None
        await read_until_closed(ws)
    for wrong in (key_subprotocol("nope"), "millm.key.!!"):
        with pytest.raises(InvalidStatus) as caught:
            async with connect(url, subprotocols=["millm.v1", wrong]):
                pass
        assert caught.value.response.status_code == 401


async def test_a_key_in_the_query_is_refused_with_how_to_send_it(keyed_host):
    with pytest.raises(InvalidStatus) as caught:
        async with connect(f"ws://{keyed_host}{WATCH}?api_key={KEY}"):
            pass
    assert caught.value.response.status_code == 401
    error = json.loads(caught.value.response.body)["error"]
    assert error["code"] == "invalid_api_key"
    assert "`?api_key=` is no longer accepted" in error["message"]
    assert "millm.key.<base64url(key)>" in error["message"]


async def test_a_keyed_websocket_from_another_origin_is_still_refused(keyed_host):
    with pytest.raises(InvalidStatus) as caught:
        async with connect(
            f"ws://{keyed_host}{WATCH}",
            origin=EVIL,
            subprotocols=["millm.v1", key_subprotocol(KEY)],
        ):
            pass
    assert caught.value.response.status_code == 403


async def test_the_api_docs_need_the_key_the_ui_and_health_do_not(keyed_host):
    async with httpx.AsyncClient(base_url=f"http://{keyed_host}") as client:
        for path in ("/openapi.json", "/docs", "/redoc"):
            refused = await client.get(path)
            assert refused.status_code == 401, path
            assert refused.json()["error"]["code"] == "invalid_api_key"
        spec = await client.get("/openapi.json", headers={"authorization": f"Bearer {KEY}"})
        ui = await client.get("/")
        health = await client.get("/health")
    assert spec.status_code == 200 and "paths" in spec.json()
    assert ui.status_code == 200
    assert health.status_code != 401


async def test_no_key_reaches_the_logs(keyed_host, caplog):
    caplog.set_level(logging.INFO)
    install_redaction()
    async with httpx.AsyncClient(base_url=f"http://{keyed_host}") as client:
        await client.get(f"/v1/models?api_key={KEY}")
        await client.get(f"/api/v1/models?token={KEY}&page_size=1")
    with pytest.raises(InvalidStatus):
        async with connect(f"ws://{keyed_host}{WATCH}?api_key={KEY}"):
            pass
    async with connect(
        f"ws://{keyed_host}{WATCH}", subprotocols=["millm.v1", key_subprotocol(KEY)]
    ) as ws:
        await read_until_closed(ws)
    # The bridge's records: the test's own httpx client logs the URLs it was given.
    messages = [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]
    # uvicorn's access log was captured, so the check below can fail.
    assert any(f"/v1/models?api_key={REDACTED}" in m for m in messages), messages
    assert any(f"?token={REDACTED}&page_size=1" in m for m in messages), messages
    assert not [m for m in messages if KEY in m]


# ---------------------------------------------------------------- the gRPC key


class _Details:
    def __init__(self, authorization: str | None) -> None:
        self.method = "/millm.v1.InferenceService/Generate"
        self.invocation_metadata = (
            (("authorization", authorization),) if authorization is not None else ()
        )


async def test_grpc_accepts_only_the_exact_key():
    served = grpc.unary_unary_rpc_method_handler(lambda request, context: None)

    async def continuation(_details):
        return served

    interceptor = AuthInterceptor(KEY)
    assert await interceptor.intercept_service(continuation, _Details(f"Bearer {KEY}")) is served
    for wrong in (f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", "", None):
        denied = await interceptor.intercept_service(continuation, _Details(wrong))
        assert denied is not served
