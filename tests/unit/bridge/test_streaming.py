# ruff: noqa: E501  (exact protocol bytes read best unwrapped)
"""Exact SSE bytes of streaming chat and completions."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from millm.v1 import inference_service_pb2 as pb
from openai_bridge import sse
from openai_bridge.errors import InferenceError
from tests.unit.bridge.fakes import delta, finished

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
HEAD = '"id":"chatcmpl-r1","object":"chat.completion.chunk","created":1700000000,"model":"m","system_fingerprint":null'


def test_streaming_chat_exact_bytes(http, fake):
    # The empty delta is text held back for a possible stop string: not sent.
    fake.script = [delta("Hel", 1), delta("", 2), delta("lo", 3), finished()]
    response = http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == (
        b"data: {"
        + HEAD.encode()
        + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
        b"data: {"
        + HEAD.encode()
        + b',"choices":[{"index":0,"delta":{"content":"Hel"},"logprobs":null,"finish_reason":null}]}\n\n'
        b"data: {"
        + HEAD.encode()
        + b',"choices":[{"index":0,"delta":{"content":"lo"},"logprobs":null,"finish_reason":null}]}\n\n'
        b"data: {"
        + HEAD.encode()
        + b',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    assert fake.streams[0].cancelled  # the call is always closed at the end


def test_streaming_chat_include_usage_exact_bytes(http, fake):
    fake.script = [delta("Hi", 1), finished(pb.FINISH_REASON_LENGTH, prompt=5, completion=1)]
    body = {**CHAT, "stream_options": {"include_usage": True}}
    response = http.post("/v1/chat/completions", json=body)
    assert response.content == (
        b"data: {"
        + HEAD.encode()
        + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
        b"data: {"
        + HEAD.encode()
        + b',"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
        b"data: {"
        + HEAD.encode()
        + b',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"length"}],"usage":null}\n\n'
        b"data: {"
        + HEAD.encode()
        + b',"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6,"prompt_tokens_details":{"cached_tokens":0}}}\n\n'
        b"data: [DONE]\n\n"
    )


def test_streaming_chat_logprobs_keep_empty_deltas(http, fake):
    lp = pb.TokenLogprob(token_id=2, token="\xe2", token_bytes=b"\xe2", logprob=-0.5)
    fake.script = [delta("", 2, logprobs=[lp]), finished()]
    response = http.post("/v1/chat/completions", json={**CHAT, "logprobs": True})
    frames = response.content.split(b"\n\n")
    assert (
        b'"delta":{"content":""},"logprobs":{"content":[{"token":"\xc3\xa2","logprob":-0.5,"bytes":[226],"top_logprobs":[]}],"refusal":null}'
        in frames[1]
    )
    assert fake.starts[0].sampling.logprobs is True


def test_completions_stream_exact_bytes(http, fake):
    fake.script = [delta(" Paris", 1), finished(pb.FINISH_REASON_LENGTH, 4, 1)]
    body = {
        "model": "m",
        "prompt": "The capital of France is",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = http.post("/v1/completions", json=body)
    head = b'{"id":"cmpl-r1","object":"text_completion","created":1700000000,"model":"m","system_fingerprint":null'
    assert response.content == (
        b"data: "
        + head
        + b',"choices":[{"text":" Paris","index":0,"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
        b"data: "
        + head
        + b',"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],"usage":null}\n\n'
        b"data: "
        + head
        + b',"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5,"prompt_tokens_details":{"cached_tokens":0}}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert fake.starts[0].prompt == "The capital of France is"


def test_error_after_stream_start_is_a_data_frame(http, fake):
    boom = InferenceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "OUT_OF_MEMORY", "Out of memory.")
    fake.script = [delta("Hi", 1), boom]
    response = http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.content.endswith(
        b'data: {"error":{"message":"Out of memory.","type":"server_error","param":null,"code":"out_of_memory"}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert fake.streams[0].cancelled


def test_unexpected_error_after_stream_start_hides_details(http, fake):
    fake.script = [RuntimeError("secret stack detail")]
    response = http.post("/v1/chat/completions", json=CHAT)
    assert b"secret" not in response.content
    assert response.content.endswith(
        b'data: {"error":{"message":"Internal server error; the details are in the inference service log.","type":"server_error","param":null,"code":"internal"}}\n\n'
        b"data: [DONE]\n\n"
    )


async def test_keepalive_comment_while_waiting():
    async def slow():
        await asyncio.sleep(0.05)
        yield {"a": 1}

    frames = [f async for f in sse.event_stream(slow(), keepalive_s=0.02)]
    assert frames[0] == b": keep-alive\n\n"
    assert frames[-2:] == [b'data: {"a":1}\n\n', b"data: [DONE]\n\n"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_admission_error_comes_before_the_stream(http, fake, path):
    fake.generate_error = InferenceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL", "Full.", retry_after_s=2
    )
    body = {**CHAT, "prompt": "x"}
    response = http.post(path, json=body)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json() == {
        "error": {
            "message": "Full.",
            "type": "rate_limit_error",
            "param": None,
            "code": "queue_full",
        }
    }
