"""Round trips through files in the browser: profiles and training templates are
exported, deleted and imported again; Monitor records history, shows statistics
and pauses."""

from __future__ import annotations

import json

import openai
import pytest
from playwright.sync_api import expect

from tests.ui.steps import Api, open_tab, unexpected_errors, wait_until

pytestmark = pytest.mark.e2e


def test_profile_export_delete_import_and_overwrite(ui_stack, page, tmp_path):
    api = Api(ui_stack.http_url)
    api.attach_random_sae(tmp_path / "io", "io-sae", d_sae=32)
    api.http.put("/api/v1/steering", json={"features": [{"index": 7, "strength": 3.25}]})
    api.post("/profiles", {"name": "round-trip", "description": "to and from a file"})
    page.goto(ui_stack.http_url + "/#profiles")
    panel = open_tab(page, "profiles")
    card = panel.locator('[data-profile="round-trip"]')

    with page.expect_download() as download:
        card.get_by_role("button", name="Export round-trip as JSON").click()
    exported = tmp_path / download.value.suggested_filename
    download.value.save_as(exported)
    document = json.loads(exported.read_text())
    assert exported.name == "round-trip.millm-profile.json"
    assert document["schema"] == "millm.profile/v1" and document["name"] == "round-trip"

    card.get_by_role("button", name="Delete round-trip").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(card).to_have_count(0)

    panel.get_by_label("Profile JSON file").set_input_files(exported)
    panel.get_by_role("button", name="Import", exact=True).click()
    expect(card).to_be_visible()
    assert [(f["index"], f["strength"]) for f in api.get("/profiles/round-trip")["features"]] == [
        (7, 3.25)
    ]

    # Importing it again: the name is taken, so the page asks before replacing.
    api.http.patch("/api/v1/profiles/round-trip", json={"description": "changed"})
    page.reload()
    panel = page.locator("#panel-profiles")
    expect(card).to_contain_text("changed")
    panel.get_by_label("Profile JSON file").set_input_files(exported)
    panel.get_by_role("button", name="Import", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Replace the profile?")
    dialog.get_by_role("button", name="Replace").click()
    wait_until(
        lambda: api.get("/profiles/round-trip")["description"] == "to and from a file",
        "the imported profile to replace the changed one",
    )
    expect(card).to_contain_text("to and from a file")  # the list shows the replacement
    api.delete("/profiles/round-trip")
    assert unexpected_errors(page) == []


def test_training_template_save_favourite_export_import(ui_stack, page, tmp_path):
    api = Api(ui_stack.http_url)
    page.goto(ui_stack.http_url + "/#training")
    panel = open_tab(page, "training")
    panel.get_by_label("Run name", exact=True).fill("tpl-from-ui")
    panel.get_by_label("Layer", exact=True).fill("9")
    panel.get_by_label("Architecture", exact=True).select_option("jumprelu")
    panel.get_by_label("Learning rate", exact=True).fill("0.0002")
    panel.get_by_role("button", name="Save form as template").click()
    expect(page.locator(".toast.success").last).to_contain_text("Saved template tpl-from-ui")
    template = next(t for t in api.get("/training/templates")["data"] if t["name"] == "tpl-from-ui")
    assert template["config"]["hook_name"] == "blocks.9.hook_resid_post"
    assert template["config"]["architecture"] == "jumprelu"
    assert template["config"]["learning_rate"] == pytest.approx(0.0002)
    select = panel.get_by_label("Template", exact=True)
    expect(select).to_have_value(template["id"])

    panel.get_by_role("button", name="Toggle favourite").click()
    expect(select.locator("option:checked")).to_have_text("★ tpl-from-ui")

    with page.expect_download() as download:
        panel.get_by_role("button", name="Export", exact=True).click()
    exported = tmp_path / "template.json"
    download.value.save_as(exported)
    assert json.loads(exported.read_text())["schema"] == "millm.training_template/v1"

    panel.get_by_role("button", name="Delete template").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    wait_until(lambda: not api.get("/training/templates")["data"], "the template to go")

    panel.get_by_label("Template JSON file to import").set_input_files(exported)
    panel.get_by_role("button", name="Import template").click()
    expect(page.locator(".toast.success").last).to_contain_text("Imported template tpl-from-ui")
    # Using it fills the form back in.
    panel.get_by_label("Layer", exact=True).fill("0")
    panel.get_by_label("Architecture", exact=True).select_option("topk")
    panel.get_by_role("button", name="Use template").click()
    expect(panel.get_by_label("Layer", exact=True)).to_have_value("9")
    expect(panel.get_by_label("Architecture", exact=True)).to_have_value("jumprelu")
    expect(panel.get_by_label("Learning rate", exact=True)).to_have_value("0.0002")
    for t in api.get("/training/templates")["data"]:
        api.delete(f"/training/templates/{t['id']}")
    assert unexpected_errors(page) == []


def test_monitor_records_history_shows_statistics_and_pauses(ui_stack, page, tmp_path):
    api = Api(ui_stack.http_url)
    api.attach_random_sae(tmp_path / "mon", "monitor-sae", d_sae=32)
    api.delete("/monitoring/history")
    client = openai.OpenAI(base_url=ui_stack.http_url + "/v1", api_key="unused")
    model = api.served_model()

    def chat() -> str:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=4
        )
        return reply.id.removeprefix("chatcmpl-")

    page.goto(ui_stack.http_url + "/#monitor")
    panel = open_tab(page, "monitor")
    expect(panel.locator(".badge", has_text="live")).to_be_visible()
    record = panel.get_by_label("Record history")
    record.check()
    wait_until(lambda: api.get("/monitoring/config")["record_history"], "recording to start")
    first = chat()
    expect(panel.locator(f'[data-request-id="{first}"]')).to_be_visible(timeout=20_000)
    panel.get_by_role("button", name="Refresh statistics").click()
    recorded = api.get("/monitoring/statistics?limit=20")["tokens"]
    assert recorded > 0
    expect(panel.locator("caption", has_text="tokens recorded")).to_have_text(
        f"{recorded:,} tokens recorded"
    )

    panel.get_by_role("button", name="Pause").click()
    expect(panel.get_by_role("button", name="Resume")).to_have_attribute("aria-pressed", "true")
    paused = chat()
    page.wait_for_timeout(1500)
    expect(panel.locator(f'[data-request-id="{paused}"]')).to_have_count(0)
    panel.get_by_role("button", name="Resume").click()
    resumed = chat()
    expect(panel.locator(f'[data-request-id="{resumed}"]')).to_be_visible(timeout=20_000)
    record.uncheck()
    wait_until(lambda: not api.get("/monitoring/config")["record_history"], "recording to stop")
    assert unexpected_errors(page) == []
