"""The admin UI follows /api/v1/events: another client's attach, detach and profile
activation show in the status bar within a second, far sooner than the fallback poll
(30 s while the events socket is open; 5 s before this change)."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.ui.steps import Api, unexpected_errors, wait_until

pytestmark = pytest.mark.e2e

# Well under the slowest poll that could explain an update (the context poll: 5 s
# while the events socket is down, 30 s while it is open).
WITHIN_S = 1.5
PROFILE = "events-ui"


def _shown_within(locator, text: str, action) -> float:
    """Runs `action` (another client's REST call) and returns seconds until `locator`
    shows `text`."""
    action()
    started = time.monotonic()
    expect(locator).to_contain_text(text, timeout=WITHIN_S * 1000)
    return time.monotonic() - started


def test_another_clients_changes_show_without_waiting_for_a_poll(ui_stack, page, tmp_path):
    api = Api(ui_stack.http_url)
    sae = api.attach_random_sae(tmp_path / "events-sae", "events-sae", d_sae=64)
    api.post("/saes/detach")
    page.goto(ui_stack.http_url + "/#models")
    wait_until(
        lambda: page.evaluate("document.documentElement.dataset.events") == "live",
        "the events WebSocket to open",
        timeout_s=10,
    )
    status_sae = page.locator("#status-sae")
    status_profile = page.locator("#status-profile")
    expect(status_sae).to_have_text("none attached")

    latencies = []
    for _ in range(2):
        latencies.append(
            _shown_within(status_sae, sae["name"], lambda: api.post(f"/saes/{sae['id']}/attach"))
        )
        latencies.append(
            _shown_within(status_sae, "none attached", lambda: api.post("/saes/detach"))
        )
    api.post(f"/saes/{sae['id']}/attach")
    expect(status_sae).to_contain_text(sae["name"], timeout=WITHIN_S * 1000)
    if not any(p["name"] == PROFILE for p in api.get("/profiles")["data"]):
        api.post("/profiles", {"name": PROFILE, "features": [{"index": 3, "strength": 2.0}]})
    latencies.append(
        _shown_within(status_profile, PROFILE, lambda: api.post(f"/profiles/{PROFILE}/activate"))
    )
    latencies.append(
        _shown_within(status_profile, "none active", lambda: api.post("/profiles/deactivate"))
    )
    print(f"UI update after another client's change: {[round(s, 3) for s in latencies]} s")
    assert max(latencies) < WITHIN_S
    assert unexpected_errors(page) == []
    api.reset_steering()
