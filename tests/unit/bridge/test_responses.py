"""Non-streaming shapes, embeddings, models and health against the fake client."""

from __future__ import annotations

import base64
import struct
import sys
from array import array

import grpc

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.errors import InferenceError
from tests.unit.bridge.fakes import delta, finished


def test_chat_non_streaming_shape(http, fake):
    fake.script = [delta("Hel", 1), delta("lo", 2), finished(pb.FINISH_REASON_STOP, 7, 2)]
    response = http.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert response.status_code == 200
    assert response.json() == {
        "id": "chatcmpl-r1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello",
                    "tool_calls": None,
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 7,
            "completion_tokens": 2,
            "total_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
    assert fake.streams[0].cancelled


def test_chat_request_translation_and_unknown_fields(http, fake):
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            # Open WebUI's shape: parts with keys we do not know.
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "there"},
                ],
            },
        ],
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 42,
        "max_tokens": 10,
        "max_completion_tokens": 20,
        "stop": "END",
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
        "n": 1,
        "user": "u",
        "response_format": {"type": "text"},
        "stream_options": {"include_usage": True, "include_obfuscation": False},
        "chat_id": "abc",
        "reasoning": {"effort": "low"},
        "tools": [],
    }
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    start = fake.starts[0]
    assert [(m.role, m.content) for m in start.chat.messages] == [
        ("system", "Be brief."),
        ("user", "Hi\nthere"),
    ]
    s = start.sampling
    assert (round(s.temperature, 3), round(s.top_p, 3), s.seed, s.max_tokens, list(s.stop)) == (
        0.5,
        0.9,
        42,
        20,
        ["END"],
    )
    assert (round(s.frequency_penalty, 3), round(s.presence_penalty, 3)) == (0.1, 0.2)
    assert start.model == "m"


def test_unset_sampling_stays_unset(http, fake):
    http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
    s = fake.starts[0].sampling
    assert not any(s.HasField(f) for f in ("temperature", "top_p", "seed", "max_tokens"))
    assert fake.starts[0].model == ""


def test_chat_logprobs_non_streaming(http, fake):
    top = pb.TopLogprob(token_id=3, token="Hey", token_bytes=b"Hey", logprob=-1.5)
    lp = pb.TokenLogprob(
        token_id=1, token="Hi", token_bytes=b"Hi", logprob=-0.25, top_logprobs=[top]
    )
    fake.script = [delta("Hi", 1, logprobs=[lp]), finished()]
    body = {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 1}
    choice = http.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert choice["logprobs"] == {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.25,
                "bytes": [72, 105],
                "top_logprobs": [{"token": "Hey", "logprob": -1.5, "bytes": [72, 101, 121]}],
            }
        ],
        "refusal": None,
    }
    assert fake.starts[0].sampling.top_logprobs == 1


def test_completion_non_streaming_shape_and_legacy_logprobs(http, fake):
    lps = [
        pb.TokenLogprob(
            token_id=1,
            token=" Par",
            logprob=-0.5,
            top_logprobs=[pb.TopLogprob(token=" Par", logprob=-0.5)],
        ),
        pb.TokenLogprob(
            token_id=2,
            token="is",
            logprob=-0.25,
            top_logprobs=[pb.TopLogprob(token="is", logprob=-0.25)],
        ),
    ]
    fake.script = [delta(" Paris", 1, 2, logprobs=lps), finished(pb.FINISH_REASON_LENGTH, 4, 2)]
    response = http.post(
        "/v1/completions",
        json={"model": "m", "prompt": ["The capital is"], "logprobs": 1, "max_tokens": 2},
    )
    assert response.json() == {
        "id": "cmpl-r1",
        "object": "text_completion",
        "created": 1700000000,
        "model": "m",
        "system_fingerprint": None,
        "choices": [
            {
                "text": " Paris",
                "index": 0,
                "logprobs": {
                    "tokens": [" Par", "is"],
                    "token_logprobs": [-0.5, -0.25],
                    "top_logprobs": [{" Par": -0.5}, {"is": -0.25}],
                    "text_offset": [0, 4],
                },
                "finish_reason": "length",
            }
        ],
        "usage": {
            "prompt_tokens": 4,
            "completion_tokens": 2,
            "total_tokens": 6,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
    assert fake.starts[0].prompt == "The capital is"
    assert fake.starts[0].sampling.logprobs and fake.starts[0].sampling.top_logprobs == 1


def test_completion_token_id_prompts(http, fake):
    http.post("/v1/completions", json={"prompt": [1, 2, 3]})
    http.post("/v1/completions", json={"prompt": [[4, 5]]})
    assert [list(s.prompt_token_ids.ids) for s in fake.starts] == [[1, 2, 3], [4, 5]]


def test_embeddings_base64_decodes_to_the_float_values(http, fake):
    floats = http.post("/v1/embeddings", json={"input": "hello", "encoding_format": "float"}).json()
    b64 = http.post("/v1/embeddings", json={"input": ["hello"], "encoding_format": "base64"}).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    decoded = array("f", raw)
    if sys.byteorder == "big":
        decoded.byteswap()
    assert decoded.tolist() == floats["data"][0]["embedding"]
    assert raw == struct.pack("<3f", 0.1, -2.5, 3.0)
    assert floats == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": floats["data"][0]["embedding"]}],
        "model": "m",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    assert [i.text for i in fake.embed_requests[0].inputs] == ["hello"]


def test_embedding_input_forms(http, fake):
    http.post("/v1/embeddings", json={"input": [1, 2], "dimensions": 3})
    http.post("/v1/embeddings", json={"input": [[1], [2, 3]]})
    first, second = fake.embed_requests
    assert [list(i.token_ids.ids) for i in first.inputs] == [[1, 2]] and first.dimensions == 3
    assert [list(i.token_ids.ids) for i in second.inputs] == [[1], [2, 3]]


def test_models_list_and_retrieve_with_slashes_and_colons(http, fake):
    card = {"id": "org/model:q4", "object": "model", "created": 1700000000, "owned_by": "millm"}
    assert http.get("/v1/models").json() == {"object": "list", "data": [card]}
    assert http.get("/v1/models/org/model:q4").json() == card
    missing = http.get("/v1/models/other")
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "message": "The model `other` does not exist or is not being served.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_models_empty_while_loading(http, fake):
    fake.info = pb.GetServerInfoResponse(model_state=pb.MODEL_STATE_LOADING, retry_after_s=5)
    assert http.get("/v1/models").json() == {"object": "list", "data": []}
    health = http.get("/health")
    assert health.status_code == 503 and health.headers["retry-after"] == "5"
    assert health.json()["model_state"] == "LOADING"


def test_health_ready_and_unreachable(http, fake):
    ok = http.get("/health")
    assert ok.status_code == 200
    assert ok.json() == {
        "status": "ok",
        "model_state": "READY",
        "model": "org/model:q4",
        "version": "0.1.0",
        "queue_depth": 3,
        "max_queue": 16,
        "batch": {
            "waiting": 1,
            "active_sequences": 2,
            "max_batch_size": 16,
            "occupancy": 0.125,
            "tokens_per_second": 41.5,
            "kv_cache_bytes": 1024,
            "kv_cache_budget_bytes": 2**30,
        },
        "memory": {
            "resident_bytes": 600 * 2**20,
            "system_available_bytes": 8 * 2**30,
            "device": "cuda:0",
            "device_allocated_bytes": 300 * 2**20,
            "device_total_bytes": 80 * 2**30,
        },
    }
    fake.info_error = InferenceError(grpc.StatusCode.UNAVAILABLE, "SERVICE_UNREACHABLE", "down")
    down = http.get("/health")
    assert down.status_code == 503 and down.json()["status"] == "unavailable"


def test_admin_page_served_at_root(http):
    page = http.get("/")
    assert page.status_code == 200 and "miLLM" in page.text
    assert "text/html" in page.headers["content-type"]
    # Modules are revalidated on every load, so an upgrade never mixes two versions.
    module = http.get("/js/main.js")
    assert module.status_code == 200 and "javascript" in module.headers["content-type"]
    assert page.headers["cache-control"] == module.headers["cache-control"] == "no-cache"
    again = http.get("/js/main.js", headers={"if-none-match": module.headers["etag"]})
    assert again.status_code == 304


def test_request_id_is_echoed(http):
    response = http.get("/v1/models", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
