"""The official `openai` SDK against the running stack with the built-in model."""

from __future__ import annotations

import base64
import concurrent.futures
from array import array

import httpx
import openai
import psutil
import pytest

MODEL = "smollm2-135m-instruct"
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]

pytestmark = pytest.mark.e2e


def test_chat_non_streaming_answers_paris(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=CAPITAL, temperature=0, max_tokens=24
    )
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_streaming_with_usage_chunk(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=CAPITAL,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # Streaming and non-streaming give the same greedy text.
    whole = client.chat.completions.create(
        model=MODEL, messages=CAPITAL, temperature=0, max_tokens=24
    )
    assert whole.choices[0].message.content == text


def test_completions(client):
    reply = client.completions.create(
        model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=5
    )
    assert "Paris" in reply.choices[0].text
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_embeddings_base64_default_and_float_agree(client):
    default = client.embeddings.create(model=MODEL, input=["hello world", "bonjour"])
    floats = client.embeddings.create(
        model=MODEL, input=["hello world", "bonjour"], encoding_format="float"
    )
    assert len(default.data) == 2 and len(default.data[0].embedding) == 576
    for a, b in zip(default.data, floats.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    # The raw wire format is little-endian float32.
    raw = client.embeddings.with_raw_response.create(
        model=MODEL, input="hello world", encoding_format="base64"
    )
    encoded = raw.http_response.json()["data"][0]["embedding"]
    assert list(array("f", base64.b64decode(encoded))) == pytest.approx(
        floats.data[0].embedding, abs=1e-6
    )


def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list().data]
    assert MODEL in ids
    assert client.models.retrieve(MODEL).id == MODEL


def test_health_shows_the_inference_process_memory(stack):
    memory = httpx.get(f"{stack.http_url}/health", timeout=10).json()["memory"]
    total = psutil.virtual_memory().total
    # The inference service is its own process here, holding the float32 weights.
    assert 100 * (1 << 20) < memory["resident_bytes"] < total
    assert 0 < memory["system_available_bytes"] < total
    assert memory["device"] == "cpu"
    assert (memory["device_allocated_bytes"], memory["device_total_bytes"]) == (0, 0)


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=CAPITAL)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


def test_negative_temperature_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=-1)
    assert caught.value.status_code == 400
    assert caught.value.param == "temperature"


def _greedy_stream(client, prompt: str) -> tuple[str, list[str]]:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=24,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    return "".join(pieces), pieces


PROMPTS = [
    "What is the capital of France?",
    "Name a colour.",
    "Say hello in Spanish.",
    "What is 2 + 2?",
    "Name a planet.",
    "What do bees make?",
    "Name a fruit.",
    "What is the opposite of hot?",
]


def test_eight_concurrent_streams_match_each_alone(client):
    alone = {p: _greedy_stream(client, p)[0] for p in PROMPTS}
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = dict(
            zip(PROMPTS, pool.map(lambda p: _greedy_stream(client, p)[0], PROMPTS), strict=True)
        )
    assert together == alone


def test_full_queue_gives_rate_limit_error(client, stack):
    def one(_: int):
        try:
            client.chat.completions.create(
                model=MODEL, messages=CAPITAL, temperature=0, max_tokens=48
            )
            return "ok"
        except openai.RateLimitError as exc:
            assert exc.response.headers.get("retry-after")
            return "429"

    n = stack.max_queue + 4
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        outcomes = list(pool.map(one, range(n)))
    assert outcomes.count("429") >= 1
    assert outcomes.count("ok") >= 1
    assert outcomes.count("ok") + outcomes.count("429") == n
