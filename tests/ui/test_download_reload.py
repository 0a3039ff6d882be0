"""A model download shows live progress that survives a page reload; the memory
estimate shows before a load; deleting asks first."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from tests.ui.steps import Api, open_tab, unexpected_errors, wait_until

pytestmark = pytest.mark.e2e

REPO = "acme/ui-slow-model"
MODEL_ID = f"{REPO}@main"  # cached models are named by repository and revision
WEIGHTS = os.urandom(900_000)
BYTES_PER_S = 90_000  # about ten seconds for the weights


def _progress(row) -> int:
    return int(row.get_by_role("progressbar").get_attribute("aria-valuenow") or 0)


def test_download_progress_survives_a_reload(ui_stack, page):
    hub = ui_stack.hub
    hub.add_repo(REPO, {"config.json": b"{}", "model.safetensors": WEIGHTS})
    hub.slow("model.safetensors", BYTES_PER_S)
    page.goto(ui_stack.http_url + "/#models")
    panel = open_tab(page, "models")
    panel.get_by_label("Hub repository").fill(REPO)
    panel.get_by_role("button", name="Download", exact=True).click()

    row = panel.locator(".operation", has_text=REPO)
    wait_until(lambda: _progress(row) >= 5, "the progress bar to move")
    before = _progress(row)
    assert before < 100
    expect(row).to_contain_text("/s")  # the speed
    expect(row).to_contain_text("ETA")
    operation_id = row.get_attribute("data-operation-id")

    page.reload()
    panel = page.locator("#panel-models")
    row = panel.locator(f'[data-operation-id="{operation_id}"]')
    expect(row).to_be_visible()
    wait_until(lambda: _progress(row) >= before, "the reloaded bar to pick up where it was")
    expect(page.locator(".toast.success")).to_contain_text(
        f"Download of {MODEL_ID} finished", timeout=60_000
    )
    model_row = panel.locator(f'tr[data-model-id="{MODEL_ID}"]')
    expect(model_row).to_contain_text("ready")

    # Delete asks for confirmation; Cancel keeps it, Delete removes it.
    model_row.get_by_role("button", name=f"Delete {MODEL_ID}").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"Delete {MODEL_ID}?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(model_row).to_be_visible()
    model_row.get_by_role("button", name=f"Delete {MODEL_ID}").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(model_row).to_have_count(0)
    assert MODEL_ID not in [m["id"] for m in Api(ui_stack.http_url).get("/models")["data"]]
    assert unexpected_errors(page) == []


def test_memory_estimate_shows_before_loading(ui_stack, page):
    api = Api(ui_stack.http_url)
    served = next(m for m in api.get("/models")["data"] if m["loaded"])
    page.goto(ui_stack.http_url + "/#models")
    panel = open_tab(page, "models")
    panel.get_by_role("button", name=f"Load {served['id']}", exact=True).click()
    estimate = panel.locator(".estimate")
    expected = api.post(
        f"/models/{served['id']}/estimate", {"quantization": "none", "dtype": "float32"}
    )
    panel.get_by_label("Dtype").select_option("float32")
    panel.get_by_label("Quantization").select_option("none")  # the default is the server's
    expect(estimate).to_contain_text(f"weights {_mib(expected['weights_bytes'])}")
    expect(estimate).to_contain_text("Fits")
    # A quantization choice changes the estimate before anything loads.
    int8 = api.post(
        f"/models/{served['id']}/estimate", {"quantization": "int8_dynamic", "dtype": "float32"}
    )
    assert int8["weights_bytes"] < expected["weights_bytes"]
    panel.get_by_label("Quantization").select_option("int8_dynamic")
    expect(estimate).to_contain_text(f"weights {_mib(int8['weights_bytes'])}")
    panel.get_by_role("button", name="Cancel").click()
    expect(estimate).to_have_count(0)
    assert unexpected_errors(page) == []


def _mib(n: int) -> str:
    value = n / (1 << 20)
    return f"{value:.2f} MiB" if value < 10 else f"{value:.1f} MiB"


def test_a_download_can_be_cancelled_from_its_progress_bar(ui_stack, page):
    repo = "acme/ui-cancelled-model"
    ui_stack.hub.add_repo(repo, {"config.json": b"{}", "model.safetensors": WEIGHTS})
    ui_stack.hub.slow("model.safetensors", BYTES_PER_S // 3, repo_id=repo)
    page.goto(ui_stack.http_url + "/#models")
    panel = open_tab(page, "models")
    panel.get_by_label("Hub repository").fill(repo)
    panel.get_by_role("button", name="Download", exact=True).click()
    row = panel.locator(".operation", has_text=repo)
    wait_until(lambda: _progress(row) >= 1, "the download to start")
    operation_id = row.get_attribute("data-operation-id")
    row.get_by_role("button", name=f"Cancel Download of {repo}@main").click()
    expect(page.locator(".toast").last).to_contain_text(f"Download of {repo}@main cancelled")
    api = Api(ui_stack.http_url)
    assert api.get(f"/operations/{operation_id}")["state"] == "cancelled"
    expect(row).to_have_count(0, timeout=10_000)
    assert unexpected_errors(page) == []
