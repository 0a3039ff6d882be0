"""The request body limit: 413 in OpenAI error JSON, by Content-Length or as it streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from openai_bridge.app import create_app
from openai_bridge.config import BridgeSettings
from openai_bridge.limits import BodyLimitMiddleware

LIMIT = 1000
TOO_LARGE = {
    "error": {
        "message": f"The request body is larger than {LIMIT} bytes, this server's limit "
        "(MILLM_MAX_REQUEST_BYTES). Send less per request.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }
}


class EchoApp:
    """Reads the whole body and answers its length; records that it ran."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def _chunks(total: int, size: int = 256) -> AsyncIterator[bytes]:
    """A body without Content-Length: httpx sends it chunked."""
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


@pytest.fixture
def echo() -> EchoApp:
    return EchoApp()


async def test_content_length_over_the_limit_is_413_before_the_app_runs(echo):
    async with _client(BodyLimitMiddleware(echo, max_bytes=LIMIT)) as http:
        response = await http.post("/v1/embeddings", content=b"x" * (LIMIT + 1))
    assert (response.status_code, response.json()) == (413, TOO_LARGE)
    assert echo.calls == 0


async def test_chunked_body_over_the_limit_is_413(echo):
    async with _client(BodyLimitMiddleware(echo, max_bytes=LIMIT)) as http:
        response = await http.post("/v1/embeddings", content=_chunks(LIMIT * 3))
    assert "content-length" not in response.request.headers
    assert (response.status_code, response.json()) == (413, TOO_LARGE)


async def test_bodies_up_to_the_limit_pass(echo):
    async with _client(BodyLimitMiddleware(echo, max_bytes=LIMIT)) as http:
        exact = await http.post("/v1/embeddings", content=b"x" * LIMIT)
        chunked = await http.post("/v1/embeddings", content=_chunks(LIMIT))
    assert (exact.status_code, exact.text) == (200, str(LIMIT))
    assert (chunked.status_code, chunked.text) == (200, str(LIMIT))


async def test_the_corpus_upload_is_exempt(echo):
    async with _client(BodyLimitMiddleware(echo, max_bytes=LIMIT)) as http:
        declared = await http.post("/api/v1/training/corpora?name=c.txt", content=b"x" * 5000)
        chunked = await http.post("/api/v1/training/corpora", content=_chunks(5000))
        # Only the upload itself: another method on that path is limited.
        other = await http.put("/api/v1/training/corpora", content=b"x" * 5000)
    assert (declared.status_code, declared.text) == (200, "5000")
    assert (chunked.status_code, chunked.text) == (200, "5000")
    assert other.status_code == 413


def test_the_default_limit_is_8_mib():
    assert BridgeSettings().max_request_bytes == 8 * 1024 * 1024


@pytest.fixture
def limited_app(settings_for):
    return create_app(settings_for(max_request_bytes=LIMIT))


def _chat(content: str) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}]}


async def test_the_app_refuses_a_large_chat_request_with_413_json(limited_app, fake):
    async with _client(limited_app) as http:
        response = await http.post("/v1/chat/completions", json=_chat("x" * LIMIT))
    assert (response.status_code, response.json()) == (413, TOO_LARGE)
    assert response.headers["x-request-id"]  # inside the request-id middleware
    assert fake.starts == []


async def test_the_app_refuses_a_large_chunked_request_not_with_the_routes_400(limited_app, fake):
    body = json.dumps(_chat("x" * LIMIT)).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    async with _client(limited_app) as http:
        response = await http.post(
            "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
    assert (response.status_code, response.json()) == (413, TOO_LARGE)
    assert fake.starts == []


async def test_the_app_serves_a_request_under_the_limit(limited_app):
    async with _client(limited_app) as http:
        response = await http.post("/v1/chat/completions", json=_chat("hi"))
    assert response.status_code == 200
