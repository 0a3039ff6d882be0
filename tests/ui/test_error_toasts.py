"""Errors reach the user as toasts carrying the server's message and what to do."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.fixtures.saes import random_sae, write_sae
from tests.ui.steps import Api, open_tab, unexpected_errors

pytestmark = pytest.mark.e2e


def test_incompatible_attach_shows_the_check_then_an_error_toast(ui_stack, page, tmp_path):
    api = Api(ui_stack.http_url)
    api.reset_steering()
    folder = write_sae(
        tmp_path / "gpt2-layer8",
        random_sae(
            d_in=768, d_sae=64, hook_name="blocks.8.hook_resid_pre", model_name="gpt2-small"
        ),
    )
    page.goto(ui_stack.http_url + "/#saes")
    panel = open_tab(page, "saes")
    # Imported through the UI, as a user would.
    panel.get_by_label("Folder on the server (absolute path)").fill(str(folder))
    panel.get_by_label("Name", exact=True).fill("gpt2-layer8")
    panel.get_by_role("button", name="Import", exact=True).click()
    expect(page.locator(".toast.success")).to_contain_text("Imported gpt2-layer8")
    card = panel.locator("article", has_text="gpt2-layer8")
    expect(card).to_contain_text("768")  # input width on the card

    card.get_by_role("button", name="Attach gpt2-layer8…").click()
    expect(card.locator(".compat")).to_contain_text("✗ Not compatible")
    expect(card.locator(".compat")).to_contain_text("width 768")
    card.get_by_role("button", name="Attach", exact=True).click()
    toast = page.get_by_role("alert").filter(has_text="Attach:")
    expect(toast).to_contain_text("The SAE reads vectors of width 768")
    expect(toast).to_contain_text("Pick an SAE trained for the served model")
    assert api.get("/saes/attachments")["data"] == []
    # The toast stays until dismissed, by keyboard too.
    toast.get_by_role("button", name="Dismiss notification").focus()
    page.keyboard.press("Enter")
    expect(toast).to_have_count(0)
    assert unexpected_errors(page) == []


def test_out_of_range_feature_index_gives_an_error_toast(ui_stack, page, tmp_path):
    api = Api(ui_stack.http_url)
    api.attach_random_sae(tmp_path / "smol-l6", "smol-l6-128", d_sae=128)
    page.goto(ui_stack.http_url + "/#steering")
    panel = open_tab(page, "steering")
    expect(panel).to_contain_text("An index from 0 to 127.")
    index = panel.get_by_label("Feature index")

    index.fill("128")
    panel.get_by_role("button", name="Add feature").click()
    toast = page.get_by_role("alert").filter(has_text="Steering not changed")
    expect(toast).to_contain_text(
        "128 is out of range: the attached SAE has 128 features (0 to 127)"
    )
    expect(toast).to_contain_text("features[0].index")
    expect(index).to_have_attribute("aria-invalid", "true")
    expect(panel.locator(".feature-row")).to_have_count(0)
    assert api.get("/steering")["live"]["features"] == []

    # A negative index never leaves the page: inline validation says why.
    index.fill("-3")
    panel.get_by_role("button", name="Add feature").click()
    expect(panel.locator("#add-feature-hint")).to_have_text("Enter a whole number, 0 or more.")

    index.fill("127")
    panel.get_by_role("button", name="Add feature").click()
    expect(panel.locator(".feature-row")).to_have_count(1)
    assert [f["index"] for f in api.get("/steering")["live"]["features"]] == [127]
    assert unexpected_errors(page) == []
