"""Behind a bridge started with MILLM_API_KEY, the page asks for the key, then sends
it with every call: REST, WebSockets (as a subprotocol) and downloads."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.fixtures.stack import second_bridge
from tests.ui.steps import Api, open_tab

pytestmark = pytest.mark.e2e

KEY = "sk-ui-test"


@pytest.fixture
def keyed_bridge(ui_stack, tmp_path):
    """A second bridge, with an API key, in front of the UI stack's inference service."""
    with second_bridge(
        ui_stack.grpc_address, tmp_path / "bridge.log", {"MILLM_API_KEY": KEY}
    ) as url:
        yield url


def test_the_page_asks_for_the_key_and_then_uses_it(keyed_bridge, ui_stack, page, tmp_path):
    api = Api(ui_stack.http_url)
    api.attach_random_sae(tmp_path / "key", "key-sae", d_sae=16)
    page.goto(keyed_bridge + "/#models")
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("API key needed")
    expect(dialog).to_contain_text("Missing or invalid API key")

    dialog.get_by_label("API key").fill("wrong")
    dialog.get_by_role("button", name="Save and reload").click()
    expect(page.get_by_role("dialog")).to_contain_text("Missing or invalid API key")

    page.get_by_role("dialog").get_by_label("API key").fill(KEY)
    page.get_by_role("dialog").get_by_role("button", name="Save and reload").click()
    panel = page.locator("#panel-models")
    expect(panel.locator('tr[data-model-id="builtin"]')).to_be_visible()
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.locator("#status-sae")).to_contain_text("key-sae")

    # The live activations WebSocket offers the key as a subprotocol, never in its URL
    # (the bridge refuses `?api_key=`, so "live" shows the subprotocol worked).
    sockets: list[str] = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    panel = open_tab(page, "monitor")
    expect(panel.locator(".badge", has_text="live")).to_be_visible()
    assert sockets and all("/api/v1/monitoring/" in url for url in sockets), sockets
    assert not [url for url in sockets if KEY in url or "api_key" in url]
    # A download carries it in the Authorization header.
    with page.expect_download() as download:
        panel.get_by_role("button", name="Export CSV").click()
    saved = tmp_path / "history.csv"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "monitoring-history.csv"
    assert saved.read_text().splitlines()[0].startswith("request_id")
