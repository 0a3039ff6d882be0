"""Steering, profiles and monitoring through the bridge on the real stack, driven by the
official `openai` SDK: a profile chosen through the model id steers exactly as the same
features set globally do, and a stalled monitoring subscriber loses frames, not speed."""

from __future__ import annotations

import contextlib
import json
import time

import httpx
import openai
import pytest
import torch

from inference_service.sae.architectures import Sae
from tests.fixtures.raw_websocket import RawWebSocket
from tests.fixtures.saes import orthonormal_sae, write_sae

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m-instruct"
HOOK = "blocks.29.hook_resid_post"
STRONG = [{"index": 7, "mode": "add", "strength": 2000}]


def last_layer_sae() -> Sae:
    """A strong add on feature 7 makes one token win; b_enc 1 keeps every feature active
    on every token, so monitoring frames are large."""
    return orthonormal_sae(hook_name=HOOK, model_name=MODEL, b_enc=torch.ones(64))


@pytest.fixture
def attached(stack, tmp_path):
    api = httpx.Client(base_url=f"{stack.http_url}/api/v1", timeout=120)
    folder = write_sae(tmp_path / "lens", last_layer_sae())
    sae_id = api.post("/saes/import", json={"path": str(folder)}).json()["id"]
    assert api.post(f"/saes/{sae_id}/attach", json={}).status_code == 200
    yield api
    api.delete("/steering")
    api.delete("/profiles/e2e-lens")
    api.post("/saes/detach", json={})
    api.delete(f"/saes/{sae_id}")


def chat(client: openai.OpenAI, model: str, **extra) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me about the sea."}],
        temperature=0,
        max_tokens=8,
        **extra,
    )
    return reply.choices[0].message.content or ""


def test_a_profile_in_the_model_id_steers_like_the_same_global_steering(stack, attached):
    api = attached
    client = openai.OpenAI(base_url=f"{stack.http_url}/v1", api_key="unused", max_retries=0)
    baseline = chat(client, MODEL)
    assert api.put("/steering", json={"features": STRONG}).status_code == 200
    globally = chat(client, MODEL)
    assert globally != baseline

    assert api.post("/profiles", json={"name": "e2e-lens"}).status_code == 201  # the live set
    api.delete("/steering")
    assert chat(client, MODEL) == baseline
    assert f"{MODEL}:e2e-lens" in [m.id for m in client.models.list()]
    assert chat(client, f"{MODEL}:e2e-lens") == globally

    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me about the sea."}],
        temperature=0,
        max_tokens=8,
        extra_body={"millm": {"steering": STRONG, "compare": True, "activations": {"top_k": 3}}},
    )
    assert reply.choices[0].message.content == globally
    extension = reply.model_extra["millm"]
    assert extension["default"]["choices"][0]["message"]["content"] == baseline
    assert extension["activations"] and all(len(a["top"]) <= 3 for a in extension["activations"])

    with pytest.raises(openai.NotFoundError):
        chat(client, f"{MODEL}:no-such-profile")
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, MODEL, extra_body={"millm": {"steering": [{"index": 64, "strength": 1}]}})
    assert "0 to 63" in caught.value.message


def _tokens_per_s(client: openai.OpenAI) -> float:
    started = time.perf_counter()
    reply = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=32, temperature=0
    )
    return reply.usage.completion_tokens / (time.perf_counter() - started)


def test_a_stalled_monitor_subscriber_loses_frames_not_speed(stack, attached):
    client = openai.OpenAI(base_url=f"{stack.http_url}/v1", api_key="unused", max_retries=0)
    alone = max(_tokens_per_s(client) for _ in range(2))
    host = stack.http_url.removeprefix("http://")
    ws = RawWebSocket(host, "/api/v1/monitoring/stream")  # reads nothing until told to
    try:
        ws.send_text(json.dumps({"top_k": 64}))
        time.sleep(0.5)
        # 12 frames of 400 kB (JSON) that nobody reads: more than the socket buffers
        # and the bridge's send queue hold.
        long_text = "The quick brown fox jumps over the lazy dog. " * 30
        for _ in range(2):
            client.embeddings.create(model=MODEL, input=[long_text] * 6)
        stalled = max(_tokens_per_s(client) for _ in range(2))
        # Catch up on what got through, then one more request: its frame carries the
        # count of frames this subscriber lost while it stalled.
        with contextlib.suppress(TimeoutError):
            while True:
                assert json.loads(ws.recv_text(3.0))["type"] == "frame"
        client.embeddings.create(model=MODEL, input="one more")
        dropped = json.loads(ws.recv_text(30.0))["dropped_frames"]
    finally:
        ws.close()
    assert dropped > 0
    assert stalled > 0.75 * alone, (stalled, alone)
