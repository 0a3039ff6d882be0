"""SIGTERM on the inference service: new requests get 503 at once, running streams get
`MILLM_SHUTDOWN_GRACE_S` to finish, and those still running then end with an error
that says the server is stopping (never "start the service")."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest

from tests.fixtures.own_stack import own_stack

pytestmark = pytest.mark.e2e

SHUTDOWN_MESSAGE = "The server is shutting down; retry on another replica or after it restarts."
# SmolLM2's end tokens (<|endoftext|>, <|im_end|>) banned, so a stream runs until max_tokens.
NO_END = {"0": -100, "2": -100}


def _chat(max_tokens: int, *, stream: bool = True) -> dict:
    return {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Count from 1 to 5000, separated by commas."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "logit_bias": NO_END,
        "stream": stream,
    }


async def _stream(client: httpx.AsyncClient, body: dict, started: asyncio.Event) -> list[dict]:
    """Every data event of one streamed chat, until [DONE]."""
    events: list[dict] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            events.append(json.loads(line[6:]))
            started.set()
    return events


async def test_sigterm_ends_long_streams_after_the_grace_with_a_truthful_error(tmp_path):
    grace_s = 2.0
    with own_stack(tmp_path, {"MILLM_SHUTDOWN_GRACE_S": str(grace_s)}) as stack:
        async with httpx.AsyncClient(base_url=stack.http_url, timeout=60) as client:
            started = [asyncio.Event(), asyncio.Event()]
            streams = [
                asyncio.create_task(_stream(client, _chat(4000), event)) for event in started
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), timeout=60)

            stack.inference.send_signal(signal.SIGTERM)
            sent_at = time.monotonic()
            await asyncio.sleep(0.3)
            # During the grace: refused at once, with a 503 that says why.
            refused = await client.post("/v1/chat/completions", json=_chat(5, stream=False))
            assert time.monotonic() - sent_at < grace_s
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "shutting_down"
            assert refused.json()["error"]["message"] == SHUTDOWN_MESSAGE
            assert (await client.get("/health")).status_code == 503

            results = await asyncio.wait_for(asyncio.gather(*streams), timeout=grace_s + 10)
            ended_after_s = time.monotonic() - sent_at
        assert ended_after_s < grace_s + 5
        for events in results:
            assert any(e.get("choices") for e in events)  # tokens came before the stop
            assert events[-1]["error"]["message"] == SHUTDOWN_MESSAGE
            assert events[-1]["error"]["code"] == "shutting_down"
        assert stack.inference.wait(timeout=10) == 0


async def test_sigterm_lets_a_stream_within_the_grace_finish(tmp_path):
    with own_stack(tmp_path, {"MILLM_SHUTDOWN_GRACE_S": "60"}) as stack:
        async with httpx.AsyncClient(base_url=stack.http_url, timeout=60) as client:
            started = asyncio.Event()
            stream = asyncio.create_task(_stream(client, _chat(24), started))
            await asyncio.wait_for(started.wait(), timeout=60)
            stack.inference.send_signal(signal.SIGTERM)
            sent_at = time.monotonic()
            events = await asyncio.wait_for(stream, timeout=60)
        assert not any("error" in e for e in events)
        finish = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
        assert finish == ["length"]
        # It stops once the stream is done, long before the 60 s grace.
        assert stack.inference.wait(timeout=30) == 0
        assert time.monotonic() - sent_at < 30
