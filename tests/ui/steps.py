"""What the browser tests do again and again: open a tab, read the API behind the
UI, put the server into a known state, and the accessibility checks run in the page."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Locator, Page, expect

from tests.fixtures.saes import random_sae, write_sae

TABS = {
    "models": "Models",
    "saes": "SAEs",
    "features": "Features",
    "steering": "Steering",
    "profiles": "Profiles",
    "monitor": "Monitor",
    "training": "Training",
}


def open_tab(page: Page, tab_id: str) -> Locator:
    """Clicks a tab and answers its panel once it shows."""
    page.get_by_role("tab", name=TABS[tab_id], exact=True).click()
    panel = page.locator(f"#panel-{tab_id}")
    expect(panel).to_be_visible()
    return panel


def unexpected_errors(page: Page) -> list[str]:
    """Console and page errors, less Chromium's notes on HTTP errors the test caused."""
    errors = page.console_errors  # type: ignore[attr-defined]
    return [e for e in errors if not e.startswith("console: Failed to load resource")]


class Api:
    """The management API, for setting up state and checking what the UI did."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=120)

    def get(self, path: str) -> Any:
        return self._ok(self.http.get(f"/api/v1{path}"))

    def post(self, path: str, body: Any = None) -> Any:
        return self._ok(self.http.post(f"/api/v1{path}", json=body))

    def delete(self, path: str) -> Any:
        return self._ok(self.http.delete(f"/api/v1{path}"))

    @staticmethod
    def _ok(response: httpx.Response) -> Any:
        assert response.is_success, (
            f"{response.request.url}: {response.status_code} {response.text}"
        )
        return response.json()

    def served_model(self) -> str:
        """The id chat clients use for the served model."""
        return self.http.get("/health").json()["model"]

    def reset_steering(self) -> None:
        """No active profile, no live features, steering on, nothing attached."""
        self.post("/profiles/deactivate")
        if self.get("/saes/attachments")["data"]:
            self.http.delete("/api/v1/steering")
            self.post("/steering/enable")
            self.post("/saes/detach")

    def attach_random_sae(self, folder: Path, name: str, d_sae: int) -> dict[str, Any]:
        """Resets the steering, then imports (once per session) and attaches a random
        SAE for the built-in model's layer 6."""
        self.reset_steering()
        sae = next((s for s in self.get("/saes?page_size=200")["data"] if s["name"] == name), None)
        if sae is None:
            write_sae(folder, random_sae(d_sae=d_sae, hook_name="blocks.6.hook_resid_post"))
            sae = self.post("/saes/import", {"path": str(folder), "name": name})
        self.post(f"/saes/{sae['id']}/attach")
        return sae


# Scripts run in the page by page.evaluate(script, root_element).
CONTRAST_SCRIPT = (Path(__file__).parent / "contrast.js").read_text()
UNNAMED_CONTROLS_SCRIPT = (Path(__file__).parent / "unnamed_controls.js").read_text()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    """Polls `condition` (which may read the API or the page) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.1)
