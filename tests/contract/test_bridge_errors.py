# ruff: noqa: E501  (exact protocol bytes read best unwrapped)
"""The error table end to end: real domain errors -> real ErrorInterceptor -> real gRPC ->
the bridge's gRPC calls -> HTTP status, exact OpenAI error JSON and retry headers."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import openai
import pytest

from inference_service import errors as domain
from millm.v1 import inference_service_pb2 as pb
from tests.conftest import free_port
from tests.contract.conftest import bridge_for

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
INTERNAL_MESSAGE = "Internal server error; the details are in the inference service log."
OOM_MESSAGE = (
    "The server ran out of memory for this request; retry with a shorter input or fewer tokens."
)


class _AlreadyExists(domain.MillmError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class _Unimplemented(domain.MillmError):
    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNSUPPORTED"


class _Cancelled(domain.MillmError):
    code = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


class _FailedPrecondition(domain.MillmError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "DIMENSION_MISMATCH"


def envelope(message, type_, param=None, code=None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# (raised in the servicer, HTTP status, JSON body, headers that must be present/absent)
ROWS = [
    pytest.param(
        domain.InvalidArgumentError("temperature must be in [0, 2].", param="temperature"),
        400,
        envelope(
            "temperature must be in [0, 2].",
            "invalid_request_error",
            "temperature",
            "invalid_value",
        ),
        {"retry-after": None, "x-should-retry": None},
        id="INVALID_ARGUMENT",
    ),
    pytest.param(
        domain.ContextLengthExceededError("Too long.", param="messages"),
        400,
        envelope("Too long.", "invalid_request_error", "messages", "context_length_exceeded"),
        {},
        id="CONTEXT_LENGTH_EXCEEDED",
    ),
    pytest.param(
        domain.UnsupportedError("No.", param="model"),
        400,
        envelope("No.", "invalid_request_error", "model", "unsupported"),
        {},
        id="UNSUPPORTED",
    ),
    pytest.param(
        domain.ModelNotFoundError("The model `x` does not exist.", param="model"),
        404,
        envelope(
            "The model `x` does not exist.", "invalid_request_error", "model", "model_not_found"
        ),
        {},
        id="MODEL_NOT_FOUND",
    ),
    pytest.param(
        _AlreadyExists("Exists."),
        409,
        envelope("Exists.", "conflict_error", None, "already_exists"),
        {"x-should-retry": "false"},
        id="ALREADY_EXISTS",
    ),
    pytest.param(
        _FailedPrecondition("Wrong width."),
        400,
        envelope("Wrong width.", "invalid_request_error", None, "dimension_mismatch"),
        {},
        id="FAILED_PRECONDITION",
    ),
    pytest.param(
        domain.NoModelLoadedError("No model is loaded."),
        503,
        envelope("No model is loaded.", "service_unavailable_error", None, "no_model_loaded"),
        {"x-should-retry": "false", "retry-after": None},
        id="NO_MODEL_LOADED",
    ),
    pytest.param(
        domain.QueueFullError("The queue is full.", retry_after_s=3),
        429,
        envelope("The queue is full.", "rate_limit_error", None, "queue_full"),
        {"retry-after": "3", "x-should-retry": None},
        id="QUEUE_FULL",
    ),
    pytest.param(
        domain.QueueFullError("The queue is full."),
        429,
        envelope("The queue is full.", "rate_limit_error", None, "queue_full"),
        {"retry-after": "1"},
        id="QUEUE_FULL-default-retry",
    ),
    pytest.param(
        domain.OutOfMemoryError("Out of memory."),
        503,
        envelope("Out of memory.", "server_error", None, "out_of_memory"),
        {"x-should-retry": "false", "retry-after": None},
        id="OUT_OF_MEMORY",
    ),
    pytest.param(
        MemoryError("cannot allocate"),
        503,
        envelope(OOM_MESSAGE, "server_error", None, "out_of_memory"),
        {"x-should-retry": "false"},
        id="MemoryError",
    ),
    pytest.param(
        domain.ModelLoadingError("Loading.", retry_after_s=7),
        503,
        envelope("Loading.", "service_unavailable_error", None, "model_loading"),
        {"retry-after": "7", "x-should-retry": None},
        id="MODEL_LOADING",
    ),
    pytest.param(
        domain.UnauthenticatedError("Bad key."),
        401,
        envelope("Bad key.", "authentication_error", None, "invalid_api_key"),
        {},
        id="UNAUTHENTICATED",
    ),
    pytest.param(
        _Cancelled("Gone."),
        499,
        envelope("Gone.", "request_cancelled", None, "cancelled"),
        {},
        id="CANCELLED",
    ),
    pytest.param(
        _Unimplemented("Not here."),
        501,
        envelope("Not here.", "not_supported_error", None, "unsupported"),
        {"x-should-retry": "false"},
        id="UNIMPLEMENTED",
    ),
    pytest.param(
        RuntimeError("secret internals"),
        500,
        envelope(INTERNAL_MESSAGE, "server_error", None, "internal"),
        {"retry-after": None, "x-should-retry": None},
        id="RuntimeError-INTERNAL",
    ),
]


def assert_headers(response: httpx.Response, expected: dict[str, str | None]) -> None:
    for name, value in expected.items():
        assert response.headers.get(name) == value, name


@pytest.mark.parametrize(("error", "status", "body", "headers"), ROWS)
async def test_error_table_row_chat(bridge, servicer, error, status, body, headers):
    servicer.error = error
    response = await bridge.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == status
    assert response.json() == body
    assert_headers(response, headers)


@pytest.mark.parametrize(("error", "status", "body", "headers"), ROWS[7:9] + ROWS[-1:])
async def test_error_table_row_streaming_fails_before_200(
    bridge, servicer, error, status, body, headers
):
    servicer.error = error
    response = await bridge.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == status
    assert response.json() == body
    assert_headers(response, headers)


@pytest.mark.parametrize(("error", "status", "body", "headers"), ROWS[:1] + ROWS[7:8] + ROWS[11:12])
async def test_error_table_row_unary(bridge, servicer, error, status, body, headers):
    servicer.error = error
    response = await bridge.post("/v1/embeddings", json={"input": "x"})
    assert (response.status_code, response.json()) == (status, body)
    assert_headers(response, headers)


async def test_deadline_exceeded_is_504(bridge, servicer):
    servicer.delay_s = 2.0  # the bridge's unary deadline is 0.5 s
    response = await bridge.post("/v1/embeddings", json={"input": "x"})
    assert response.status_code == 504
    assert response.json() == envelope(
        "The inference service did not answer in time.", "timeout_error", None, "timeout"
    )


async def test_models_during_load_maps_model_loading(bridge, servicer):
    servicer.error = domain.ModelLoadingError("Loading.", retry_after_s=4)
    response = await bridge.get("/v1/models")
    assert (response.status_code, response.headers["retry-after"]) == (503, "4")


async def test_error_mid_stream_is_an_sse_data_frame(bridge, servicer):
    servicer.script = [
        pb.GenerateResponse(delta=pb.TokenDelta(text="Hi", token_ids=[1])),
        domain.OutOfMemoryError("Out of memory."),
    ]
    response = await bridge.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    frames = response.content.split(b"\n\n")
    assert json.loads(frames[1][6:])["choices"][0]["delta"] == {"content": "Hi"}
    assert frames[2:] == [
        b'data: {"error":{"message":"Out of memory.","type":"server_error","param":null,"code":"out_of_memory"}}',
        b"data: [DONE]",
        b"",
    ]


async def test_success_forwards_api_key_and_request_id(scripted_server, servicer):
    _, address = scripted_server
    servicer.script = [
        pb.GenerateResponse(delta=pb.TokenDelta(text="Hello", token_ids=[1])),
        pb.GenerateResponse(
            finished=pb.GenerateFinished(
                finish_reason=pb.FINISH_REASON_STOP,
                usage=pb.Usage(prompt_tokens=3, completion_tokens=1),
            )
        ),
    ]
    http, client = bridge_for(address, api_key="k")
    async with http:
        response = await http.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"authorization": "Bearer k", "x-request-id": "req-7"},
        )
    await client.close()
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello"
    assert servicer.metadata[-1]["authorization"] == "Bearer k"
    assert servicer.metadata[-1]["x-request-id"] == "req-7"


async def test_client_disconnect_cancels_the_grpc_call(scripted_server, servicer):
    """The HTTP client leaves mid-stream; the servicer must see its call cancelled."""
    _, address = scripted_server
    servicer.script = [pb.GenerateResponse(delta=pb.TokenDelta(text="Hi", token_ids=[1])), "hang"]
    http, client = bridge_for(address)
    async with http:
        # httpx's ASGITransport buffers whole bodies, so drive the app directly.
        app = http._transport.app  # type: ignore[attr-defined]
        got_chunk = asyncio.Event()
        body = json.dumps({**CHAT, "stream": True}).encode()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop()
            await got_chunk.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body" and b"Hi" in message.get("body", b""):
                got_chunk.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("bridge", 80),
        }
        await asyncio.wait_for(app(scope, receive, send), timeout=5)
        await asyncio.wait_for(servicer.cancelled.wait(), timeout=5)
    await client.close()


async def test_service_unreachable_is_503_with_a_helpful_message():
    address = f"127.0.0.1:{free_port()}"
    http, client = bridge_for(address)
    async with http:
        response = await http.post("/v1/chat/completions", json=CHAT)
        health = await http.get("/health")
    await client.close()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["type"] == "service_unavailable_error" and error["code"] == "service_unreachable"
    assert f"unreachable at {address}" in error["message"]
    assert "millm-inference" in error["message"]
    assert health.status_code == 503


async def test_openai_sdk_sees_rate_limit_error(scripted_server, servicer):
    _, address = scripted_server
    servicer.error = domain.QueueFullError("The queue is full.", retry_after_s=2)
    http, client = bridge_for(address)
    async with http:
        sdk = openai.AsyncOpenAI(
            base_url="http://bridge/v1", api_key="x", max_retries=0, http_client=http
        )
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Hi"}]
            )
    await client.close()
    assert caught.value.status_code == 429
    assert caught.value.code == "queue_full"
    assert caught.value.type == "rate_limit_error"
    assert caught.value.response.headers["retry-after"] == "2"
