"""A client that leaves mid-request cancels its generation (driven at the ASGI level)."""

from __future__ import annotations

import asyncio
import json

from tests.unit.bridge.fakes import HANG, delta


async def drive(app, body: dict, disconnect, *, after: bytes = b"") -> list[dict]:
    """Sends one POST; answers `receive` with http.disconnect once `disconnect` is set
    and the response so far contains `after` (the fake service's messages reach the
    bridge over the network, after the service has moved on)."""
    sent: list[dict] = []
    sent_more = asyncio.Event()
    delivered = False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await disconnect.wait()
        while after not in b"".join(m.get("body", b"") for m in sent):
            sent_more.clear()
            await sent_more.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        sent_more.set()

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
        "server": ("127.0.0.1", 8000),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    return sent


async def test_streaming_disconnect_cancels_the_call(app, fake):
    fake.script = [delta("Hi", 1), HANG]
    body = {"messages": [{"role": "user", "content": "x"}], "stream": True}
    sent = await drive(app, body, fake.hanging)
    assert sent[0]["status"] == 200
    assert fake.streams[0].cancelled


async def test_non_streaming_disconnect_cancels_the_call(app, fake):
    fake.script = [delta("Hi", 1), HANG]
    body = {"messages": [{"role": "user", "content": "x"}]}
    await drive(app, body, fake.hanging)
    assert fake.streams[0].cancelled
