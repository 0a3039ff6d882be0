"""A page on another origin, in a real browser, against the UI stack (no key, no
MILLM_CORS_ORIGINS): it can neither read the live monitoring WebSocket nor change state
with the "simple" requests CORS lets through unpreflighted. The other origin is the same
server under another name (`localhost` against `127.0.0.1`), as a browser sees it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.ui.steps import Api

pytestmark = pytest.mark.e2e

# A page to run scripts in: one of the admin UI's files, so no app script runs.
PAGE = "/favicon.svg"
# Opens the monitoring WebSocket and reports, after it closes or `ms` passed, whether
# it opened and how many frames the page could read.
SOCKET_JS = """([url, ms]) => new Promise((resolve) => {
  const seen = {opened: false, frames: 0, closed: false};
  const socket = new WebSocket(url);
  socket.onopen = () => { seen.opened = true; socket.send(JSON.stringify({top_k: 3})); };
  socket.onmessage = () => { seen.frames += 1; };
  socket.onclose = () => { seen.closed = true; resolve(seen); };
  setTimeout(() => { socket.close(); resolve(seen); }, ms);
})"""
# What an attacking page sends: no preflight, an opaque answer it cannot read.
SIMPLE_POST_JS = """async (url) => {
  const response = await fetch(url, {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "text/plain"}, body: "{}"});
  return response.type;
}"""


def other_origin(url: str) -> str:
    return f"http://localhost:{urlsplit(url).port}"


def socket_url(base: str) -> str:
    return "ws" + base.removeprefix("http") + "/api/v1/monitoring/stream"


def attach_sae(api: Api, tmp_path) -> None:
    # A width no other UI test uses: the service knows an SAE by its files, so the
    # same random SAE imported under two names would be one SAE with the first name.
    api.attach_random_sae(tmp_path / "xo", "xorigin-sae", d_sae=24)


def open_socket(page, base: str) -> dict[str, Any]:
    return page.evaluate(SOCKET_JS, [socket_url(base), 4000])


def test_another_origin_cannot_read_the_monitoring_socket(ui_stack, page, tmp_path):
    api = Api(ui_stack.http_url)
    attach_sae(api, tmp_path)
    # The admin UI's own origin opens it: the check below can fail.
    page.goto(ui_stack.http_url + PAGE)
    assert open_socket(page, ui_stack.http_url)["opened"] is True

    page.goto(other_origin(ui_stack.http_url) + PAGE)
    assert open_socket(page, ui_stack.http_url) == {"opened": False, "frames": 0, "closed": True}
    api.reset_steering()


def test_another_origin_cannot_change_state(ui_stack, page, tmp_path):
    api = Api(ui_stack.http_url)
    attach_sae(api, tmp_path)
    api.post("/steering/enable")
    before = api.get("/steering")
    assert before["live"]["enabled"] is True

    page.goto(other_origin(ui_stack.http_url) + PAGE)
    for path in ("/api/v1/steering/disable", "/api/v1/models/unload"):
        # The request goes out and gets an opaque answer, as any no-cors fetch does.
        assert page.evaluate(SIMPLE_POST_JS, ui_stack.http_url + path) == "opaque"

    assert api.get("/steering")["live"]["enabled"] is True
    health = api.http.get("/health").json()
    assert health["model_state"] == "READY", health
    api.reset_steering()
