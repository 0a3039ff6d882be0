"""The admin UI opens in headless Chromium without errors."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_admin_page_opens_without_errors(ui_stack, page, artifacts_dir):
    page.goto(ui_stack.http_url + "/", wait_until="networkidle")
    page.screenshot(path=artifacts_dir / "smoke.png", full_page=True)
    assert "miLLM" in page.title()
    assert page.console_errors == []
