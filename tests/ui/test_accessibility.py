"""WCAG AA contrast of every visible text and an accessible name on every control,
in every tab, with data on the page."""

from __future__ import annotations

import pytest

from tests.ui.steps import (
    CONTRAST_SCRIPT,
    TABS,
    UNNAMED_CONTROLS_SCRIPT,
    Api,
    open_tab,
    unexpected_errors,
)

pytestmark = pytest.mark.e2e


def test_every_tab_meets_aa_contrast_and_names_its_controls(ui_stack, page, tmp_path):
    api = Api(ui_stack.http_url)
    api.attach_random_sae(tmp_path / "a11y", "a11y-sae", d_sae=64)
    api.http.put(
        "/api/v1/steering", json={"features": [{"index": 3, "strength": 4, "label": "three"}]}
    )
    page.goto(ui_stack.http_url + "/")
    for tab_id in TABS:
        panel = open_tab(page, tab_id)
        page.wait_for_timeout(800)  # lists and cards arrive from the API
        contrast = page.evaluate(CONTRAST_SCRIPT, page.locator("body").element_handle())
        assert contrast["checked"] > 10, tab_id
        assert contrast["failures"] == [], f"{tab_id}: {contrast['failures']}"
        unnamed = page.evaluate(UNNAMED_CONTROLS_SCRIPT, panel.element_handle())
        assert unnamed == [], f"{tab_id}: controls without an accessible name: {unnamed}"
    assert page.evaluate(UNNAMED_CONTROLS_SCRIPT, page.locator("#tablist").element_handle()) == []
    assert unexpected_errors(page) == []
