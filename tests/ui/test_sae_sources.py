"""SAEs from the Hub and the SAELens registry, found and downloaded in the browser;
a training run stopped and resumed from its row."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.fixtures.corpus import write_jsonl
from tests.fixtures.saes import folder_files, random_sae, write_sae
from tests.ui.steps import Api, open_tab, unexpected_errors, wait_until

pytestmark = pytest.mark.e2e


def test_preview_a_hub_repository_and_download_an_sae_from_it(ui_stack, page, tmp_path):
    files = folder_files(write_sae(tmp_path / "sae", random_sae(d_sae=48, seed=3)))
    ui_stack.hub.add_repo(
        "acme/smol-saes",
        {f"layer_9/{name}": data for name, data in files.items()} | {"README.md": b"# SAEs"},
    )
    page.goto(ui_stack.http_url + "/#saes")
    panel = open_tab(page, "saes")
    preview = panel.get_by_role("form", name="Preview a Hub repository")
    preview.get_by_label("Hub repository").fill("acme/smol-saes")
    preview.get_by_role("button", name="Preview").click()
    candidate = panel.locator(".finder-results li", has_text="layer_9")
    expect(candidate).to_contain_text("48 features")
    expect(candidate).to_contain_text("blocks.9.hook_resid_post")
    candidate.get_by_role("button", name="Download layer_9").click()
    expect(page.locator(".toast.success").last).to_contain_text("finished", timeout=60_000)
    card = panel.locator("article", has_text="acme/smol-saes/layer_9")
    expect(card).to_contain_text("ready")
    expect(card).to_contain_text("48")
    saes = Api(ui_stack.http_url).get("/saes")["data"]
    assert any(s["source"].get("repo_id") == "acme/smol-saes" and s["d_sae"] == 48 for s in saes)
    assert unexpected_errors(page) == []


def test_registry_is_filtered_by_model_name(ui_stack, page):
    page.goto(ui_stack.http_url + "/#saes")
    panel = open_tab(page, "saes")
    registry = panel.get_by_role("form", name="Browse the SAELens registry")
    # It starts filtered to the served model, for which the registry has nothing.
    expect(registry.get_by_label("Model name contains")).to_have_value("smollm2-135m-instruct")
    expect(panel).to_contain_text("No release in the registry matches that model.")
    registry.get_by_label("Model name contains").fill("gpt2-small")
    registry.get_by_role("button", name="Browse").click()
    release = panel.locator(".finder-results li", has_text="gpt2-small-res-jb")
    expect(release.first).to_be_visible()
    expect(release.first.get_by_label("SAE inside gpt2-small-res-jb")).to_contain_text(
        "blocks.8.hook_resid_pre"
    )
    assert unexpected_errors(page) == []


def test_stop_and_resume_a_run_from_its_row(ui_stack, page, tmp_path):
    api = Api(ui_stack.http_url)
    corpus = write_jsonl(tmp_path / "stop.jsonl", count=300, seed=5).read_bytes()
    uploaded = api.http.post(
        "/api/v1/training/corpora?name=stop.jsonl",
        content=corpus,
        headers={"Content-Type": "application/octet-stream"},
    ).json()["corpus"]
    config = {
        "corpus": {"corpus_id": uploaded["id"]},
        "hook_name": "blocks.2.hook_resid_post",
        "expansion_factor": 2,
        "k": 8,
        "batch_size_tokens": 256,
        "total_tokens": 256 * 400,
        "context_size": 64,
        "checkpoint_every_steps": 1000,
    }
    run = api.post("/training/runs", {"name": "stop-me", "config": config})["run"]
    page.goto(ui_stack.http_url + "/#training")
    panel = open_tab(page, "training")
    row = panel.locator(f'tr[data-run-id="{run["id"]}"]')
    wait_until(lambda: api.get(f"/training/runs/{run['id']}")["run"]["step"] > 2, "a few steps")
    row.get_by_role("button", name="Stop stop-me").click()
    expect(row).to_contain_text("stopped", timeout=60_000)
    stopped = api.get(f"/training/runs/{run['id']}")["run"]
    assert stopped["state"] == "stopped" and 0 < stopped["checkpoint_step"] < stopped["total_steps"]

    row.get_by_role("button", name="Resume stop-me").click()
    expect(page.locator(".toast").last).to_contain_text("Resumed stop-me")
    wait_until(
        lambda: api.get(f"/training/runs/{run['id']}")["run"]["step"] > stopped["step"],
        "the run to go on from its checkpoint",
    )
    api.post(f"/training/runs/{run['id']}/stop")
    wait_until(
        lambda: api.get(f"/training/runs/{run['id']}")["run"]["state"] == "stopped",
        "the run to stop again",
        timeout_s=60,
    )
    assert unexpected_errors(page) == []
