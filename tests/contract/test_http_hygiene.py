"""HTTP hygiene of the real app over the scripted gRPC server: CORS, 404 and 405 for
routes nobody serves, and one INFO log line per 4xx."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from inference_service import errors as domain
from tests.contract.conftest import bridge_for

ALLOWED = "http://app.example:3000"
REFUSED = "http://elsewhere.example"
KEY = "sk-hygiene-key"
AUTH = {"authorization": f"Bearer {KEY}"}
PROMPT = "a prompt that must stay out of the log"
CHAT = {"model": "m", "messages": [{"role": "user", "content": PROMPT}]}
# What the openai SDK's browser build sends besides the body's Content-Type.
SDK_HEADERS = "authorization, content-type, x-request-id, x-stainless-os, x-stainless-retry-count"


def preflight(origin: str, headers: str = SDK_HEADERS) -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": headers,
    }


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


@pytest.fixture
async def make_bridge(scripted_server, servicer) -> AsyncIterator:
    """Opens bridges with the given settings over the scripted server; closes them after."""
    _, address = scripted_server
    opened = []

    async def make(**settings) -> httpx.AsyncClient:
        http, client = bridge_for(address, **settings)
        opened.append((http, client))
        return http

    yield make
    for http, client in opened:
        await http.aclose()
        await client.close()


@pytest.fixture
async def cors_bridge(make_bridge) -> httpx.AsyncClient:
    """A keyed bridge that lets pages from ALLOWED call it."""
    return await make_bridge(api_key=KEY, cors_origins=[ALLOWED])


async def test_preflight_from_an_allowed_origin_needs_no_key(cors_bridge, servicer):
    response = await cors_bridge.options("/v1/chat/completions", headers=preflight(ALLOWED))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in response.headers["access-control-allow-methods"].split(", ")
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert allowed == {h.strip() for h in SDK_HEADERS.split(",")}
    assert servicer.metadata == []  # answered by the bridge alone


async def test_preflight_from_a_refused_origin_gets_no_cors_headers(cors_bridge):
    response = await cors_bridge.options("/v1/chat/completions", headers=preflight(REFUSED))
    assert response.status_code == 403
    assert cors_headers(response) == {}
    assert response.json() == {
        "error": {
            "message": f"Browser pages from {REFUSED} may not call this API; list the origin"
            " in MILLM_CORS_ORIGINS to allow them.",
            "type": "permission_error",
            "param": None,
            "code": "origin_refused",
        }
    }


async def test_star_allows_any_origin(make_bridge):
    bridge = await make_bridge(cors_origins="*")
    response = await bridge.options("/v1/embeddings", headers=preflight(REFUSED))
    assert (response.status_code, response.headers["access-control-allow-origin"]) == (200, "*")


@pytest.mark.parametrize("status", [401, 400, 429])
async def test_errors_carry_cors_headers_for_an_allowed_origin(cors_bridge, servicer, status):
    headers = {"origin": ALLOWED, **({} if status == 401 else AUTH)}
    body = {"model": "m"} if status == 400 else CHAT  # no `messages`: a 400
    if status == 429:
        servicer.error = domain.QueueFullError("The queue is full.", retry_after_s=2)
    response = await cors_bridge.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == status
    assert response.headers["access-control-allow-origin"] == ALLOWED
    exposed = response.headers["access-control-expose-headers"].lower().split(", ")
    assert {"x-request-id", "retry-after"} <= set(exposed)
    assert "error" in response.json()


async def test_a_refused_origin_is_not_allowed_on_the_answer(cors_bridge):
    response = await cors_bridge.get("/v1/models", headers={"origin": REFUSED, **AUTH})
    assert "access-control-allow-origin" not in response.headers


async def test_no_cors_headers_by_default(make_bridge):
    bridge = await make_bridge()
    # Another origin's POST is refused outright (tests/contract/test_origin_defence.py).
    simple = await bridge.post("/v1/chat/completions", json={}, headers={"origin": ALLOWED})
    refused = await bridge.options("/v1/chat/completions", headers=preflight(ALLOWED))
    assert (simple.status_code, cors_headers(simple)) == (403, {})
    assert (refused.status_code, cors_headers(refused)) == (403, {})
    assert refused.json()["error"]["code"] == "origin_refused"


@pytest.mark.parametrize("method", ["POST", "GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_an_unknown_route_is_404_for_any_method(bridge, method):
    response = await bridge.request(method, "/v1/no-such-route")
    assert response.status_code == 404
    assert "allow" not in response.headers
    assert response.json() == {
        "error": {
            "message": f"Unknown route: {method} /v1/no-such-route",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("OPTIONS", "/v1/chat/completions", "POST"),  # not a preflight: no Origin
        ("PUT", "/v1/embeddings", "POST"),
        ("POST", "/v1/models", "GET"),
        # Two routes, one per method, at one path: the Allow names both.
        ("DELETE", "/api/v1/profiles", "GET, POST"),
    ],
)
async def test_a_wrong_method_is_405_naming_the_routes_methods(bridge, method, path, allow):
    response = await bridge.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["error"] == {
        "message": f"Method {method} is not allowed on {path}",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


async def test_the_admin_ui_is_still_served(bridge):
    index = await bridge.get("/")
    head = await bridge.head("/index.html")
    assert index.status_code == 200 and "<html" in index.text
    assert index.headers["cache-control"] == "no-cache"
    assert (head.status_code, head.headers["content-type"]) == (200, "text/html; charset=utf-8")


def bridge_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the bridge logged (httpx logs the test client's side, query string included)."""
    return [r for r in caplog.records if r.name.startswith("openai_bridge")]


async def test_each_4xx_is_logged_once_at_info_with_its_reason(bridge, servicer, caplog):
    caplog.set_level(logging.INFO)
    servicer.error = domain.InvalidArgumentError(
        "temperature must be in [0, 2].", param="temperature"
    )
    await bridge.post("/v1/chat/completions", json=CHAT)
    await bridge.post("/v1/no-such-route", json=CHAT)
    assert [(r.levelno, r.getMessage()) for r in bridge_records(caplog)] == [
        (
            logging.INFO,
            "POST /v1/chat/completions answered 400, code=invalid_value param=temperature:"
            " temperature must be in [0, 2].",
        ),
        (
            logging.INFO,
            "POST /v1/no-such-route answered 404, code=None param=None:"
            " Unknown route: POST /v1/no-such-route",
        ),
    ]
    assert not any(PROMPT in r.getMessage() for r in caplog.records)  # httpx's too


async def test_a_refused_key_is_logged_without_the_key(make_bridge, caplog):
    caplog.set_level(logging.INFO)
    bridge = await make_bridge(api_key=KEY)
    response = await bridge.get(
        "/v1/models?api_key=sk-query-secret", headers={"authorization": "Bearer sk-header-secret"}
    )
    assert response.status_code == 401
    [record] = bridge_records(caplog)
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith(
        "GET /v1/models answered 401, code=invalid_api_key param=None: Missing or invalid API key"
    )
    assert "secret" not in record.getMessage()
