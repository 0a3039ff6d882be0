"""Keyboard only: every tab and the main actions, with focus always visible."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.ui.steps import TABS, Api, unexpected_errors, wait_until

pytestmark = pytest.mark.e2e

# Marks every visible, enabled control of the shown panel and the tab strip, so a
# Tab walk can say which it reached.
MARK_CONTROLS = """
() => {
  const controls = [...document.querySelectorAll(
    "#tablist [aria-selected=true], " +
    "[role=tabpanel]:not([hidden]) :is(button, input, select, textarea, a[href])")]
    .filter((el) => !el.disabled && el.getBoundingClientRect().width > 0);
  controls.forEach((el, i) => (el.dataset.kb = String(i)));
  return controls.length;
}
"""

FOCUS = """
() => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  const labels = [...(el.labels || [])].map((l) => l.textContent).join("");
  return {kb: el.dataset.kb ?? null,
          label: el.getAttribute("aria-label") || labels || el.textContent.trim().slice(0, 40),
          outline: style.outlineStyle, width: parseFloat(style.outlineWidth)};
}
"""


def _settled_control_count(page: Page) -> int:
    """Marks the controls once the tab's lists have arrived from the API: the same
    count three times in a row, 300 ms apart."""
    counts: list[int] = []
    while len(counts) < 3 or len(set(counts[-3:])) > 1:
        page.wait_for_timeout(300)
        counts.append(page.evaluate(MARK_CONTROLS))
        assert len(counts) < 50, f"the page kept changing: {counts}"
    return counts[-1]


def _tab_walk(page: Page, limit: int = 400) -> set[str]:
    """Presses Tab until the focus comes round again; checks each stop shows its focus."""
    reached: set[str] = set()
    for _ in range(limit):
        page.keyboard.press("Tab")
        focus = page.evaluate(FOCUS)
        if focus["kb"] is None:
            continue
        assert focus["outline"] != "none" and focus["width"] >= 2, (
            f"no visible focus on {focus['label']}"
        )
        if focus["kb"] in reached:
            return reached
        reached.add(focus["kb"])
    return reached


def test_every_tab_and_control_is_reachable_by_keyboard(ui_stack, page, tmp_path):
    api = Api(ui_stack.http_url)
    api.attach_random_sae(tmp_path / "kb", "keyboard-sae", d_sae=64)
    page.goto(ui_stack.http_url + "/")
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to content")
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_attribute("role", "tab")

    ids = list(TABS)
    for step, tab_id in enumerate(ids):
        if step:
            page.keyboard.press("ArrowRight")
        tab = page.get_by_role("tab", name=TABS[tab_id], exact=True)
        expect(tab).to_be_focused()
        expect(tab).to_have_attribute("aria-selected", "true")
        expect(page.locator(f"#panel-{tab_id}")).to_be_visible()
        total = _settled_control_count(page)
        reached = _tab_walk(page)
        assert len(reached) == total, f"{tab_id}: reached {len(reached)} of {total} controls by Tab"
        tab.focus()
    page.keyboard.press("ArrowRight")  # wraps round to the first tab
    expect(page.get_by_role("tab", name="Models")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("End")
    expect(page.get_by_role("tab", name="Training")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("Home")
    expect(page.get_by_role("tab", name="Models")).to_have_attribute("aria-selected", "true")
    assert unexpected_errors(page) == []


def _focus_by_tab(page: Page, label: str, limit: int = 80) -> None:
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(FOCUS)["label"].startswith(label):
            return
    raise AssertionError(f"Tab never reached {label!r}")


def test_steer_and_save_a_profile_with_the_keyboard_alone(ui_stack, page, tmp_path):
    api = Api(ui_stack.http_url)
    api.attach_random_sae(tmp_path / "kb2", "keyboard-sae-2", d_sae=64)
    page.goto(ui_stack.http_url + "/#steering")
    expect(page.locator("#panel-steering")).to_contain_text("An index from 0 to 63.")

    _focus_by_tab(page, "Feature index")
    page.keyboard.type("12")
    page.keyboard.press("Enter")  # submits the form
    slider = page.get_by_label("Strength of feature 12", exact=True)
    expect(slider).to_be_focused()  # focus moves to the new feature's slider
    before = float(slider.input_value())
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    wait_until(
        lambda: (
            [(f["index"], f["strength"] > before) for f in api.get("/steering")["live"]["features"]]
            == [(12, True)]
        ),
        "the slider's new strength to reach the server",
    )

    # The switch toggles with Space.
    _focus_by_tab(page, "Live steering enabled")
    page.keyboard.press("Space")
    wait_until(lambda: api.get("/steering")["live"]["enabled"] is False, "steering to switch off")

    page.get_by_role("tab", name="Steering").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Profiles")).to_have_attribute("aria-selected", "true")
    _focus_by_tab(page, "Profile name")
    page.keyboard.type("keyboard-made")
    page.keyboard.press("Enter")
    expect(page.locator('[data-profile="keyboard-made"]')).to_be_visible()
    assert [f["index"] for f in api.get("/profiles/keyboard-made")["features"]] == [12]
    _focus_by_tab(page, "Activate keyboard-made")
    page.keyboard.press("Enter")
    expect(page.locator("#status-profile")).to_have_text("keyboard-made")
    api.delete("/profiles/keyboard-made")
    assert unexpected_errors(page) == []
