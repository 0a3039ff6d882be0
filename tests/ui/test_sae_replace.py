"""The SAE tab attaches in half precision and, with an SAE attached, replaces it in one call."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.fixtures.saes import random_sae, write_sae
from tests.ui.steps import Api, open_tab, unexpected_errors

pytestmark = pytest.mark.e2e


def test_attach_as_float16_replaces_the_attached_sae(ui_stack, page, tmp_path):
    api = Api(ui_stack.http_url)
    # A width no other UI test imports: importing the same weights again gives back
    # the SAE already cached, under its first name.
    first = api.attach_random_sae(tmp_path / "first", "replace-first", d_sae=40)
    folder = write_sae(
        tmp_path / "second", random_sae(d_sae=48, hook_name="blocks.6.hook_resid_post")
    )
    second = api.post("/saes/import", {"path": str(folder), "name": "replace-second"})
    page.goto(ui_stack.http_url + "/#saes")
    panel = open_tab(page, "saes")
    card = panel.locator("article", has_text="replace-second")
    card.get_by_role("button", name="Attach replace-second…").click()
    expect(card.locator(".compat")).to_contain_text("✓ Compatible")
    expect(card).to_contain_text("Replaces replace-first")
    card.get_by_label("Weights dtype").select_option("float16")
    card.get_by_role("button", name="Attach", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Replace replace-first?")
    dialog.get_by_role("button", name="Replace").click()
    expect(page.locator(".toast.success")).to_contain_text("Attached replace-second")
    expect(page.locator(".toast.success")).to_contain_text("float16")
    [attached] = api.get("/saes/attachments")["data"]
    assert (attached["sae_id"], attached["dtype"]) == (second["id"], "float16")
    assert attached["sae_id"] != first["id"]
    api.reset_steering()
    assert unexpected_errors(page) == []
