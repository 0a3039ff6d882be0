"""The bridge's own graceful stop: a stream still running when the grace runs out ends
with the truthful shutting-down error event, inside the grace; new requests get 503."""

from __future__ import annotations

import asyncio
import json

from openai_bridge.app import create_app
from openai_bridge.draining import SHUTTING_DOWN, Draining
from tests.unit.bridge.fakes import HANG, delta
from tests.unit.bridge.test_disconnect import drive

GRACE_S = 0.8


async def test_a_stream_ends_with_the_shutting_down_event_before_the_grace_is_over(
    fake, settings_for
):
    draining = Draining(GRACE_S)
    app = create_app(settings_for(), clock=lambda: 0, draining=draining)
    fake.script = [delta("Hel", 1), HANG]
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
    request = asyncio.ensure_future(drive(app, body, asyncio.Event()))
    await asyncio.wait_for(fake.hanging.wait(), 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    draining.start()
    sent = await asyncio.wait_for(request, 5)
    assert loop.time() - started < GRACE_S
    text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    frames = [f for f in text.decode().split("\n\n") if f.startswith("data: ")]
    assert frames[-1] == "data: [DONE]"
    error = json.loads(frames[-2].removeprefix("data: "))["error"]
    assert error["message"] == SHUTTING_DOWN and error["code"] == "shutting_down"
    assert fake.streams[0].cancelled


async def test_new_api_requests_get_503_while_draining(fake, settings_for):
    draining = Draining(GRACE_S)
    app = create_app(settings_for(), clock=lambda: 0, draining=draining)
    draining.start()
    sent = await drive(app, {"messages": [{"role": "user", "content": "Hi"}]}, asyncio.Event())
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 503
    assert not fake.starts
