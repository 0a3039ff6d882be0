"""The whole flow in a real browser: train an SAE, attach it, steer a feature, save a
profile, chat through the official openai SDK with `model:profile`, and see that
request's activations in Monitor. Screenshots of every tab are saved on the way."""

from __future__ import annotations

import math
import re

import openai
import pytest
from playwright.sync_api import expect

from tests.fixtures.corpus import write_jsonl
from tests.ui.steps import TABS, Api, open_tab, unexpected_errors, wait_until

pytestmark = pytest.mark.e2e

LAYER = 3
FEATURE = 5
STRENGTH = 8.5
PROFILE = "ui-flow"


def test_train_attach_steer_profile_chat_and_monitor(ui_stack, page, artifacts_dir, tmp_path):
    api = Api(ui_stack.http_url)
    api.reset_steering()
    corpus = write_jsonl(tmp_path / "ui-corpus.jsonl", count=600)
    page.goto(ui_stack.http_url + "/#training")

    # --- Training: upload the corpus, fill the form, start, watch the charts -------------
    panel = open_tab(page, "training")
    panel.get_by_label("Corpus file to upload (.txt or .jsonl)").set_input_files(corpus)
    panel.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator(".toast.success").last).to_contain_text("Uploaded ui-corpus.jsonl")
    expect(panel.get_by_label("Uploaded corpus")).to_have_value(
        api.get("/training/corpora")["data"][0]["id"]
    )
    panel.get_by_label("Run name", exact=True).fill("ui-run")
    panel.get_by_label("Layer", exact=True).fill(str(LAYER))
    panel.get_by_label("Expansion factor", exact=True).fill("2")
    panel.get_by_label("k (TopK)", exact=True).fill("16")
    panel.get_by_label("Batch size (tokens)", exact=True).fill("512")
    panel.get_by_label("Total tokens", exact=True).fill("6144")
    panel.get_by_label("Context size", exact=True).fill("64")
    panel.get_by_label("Checkpoint every (steps)", exact=True).fill("4")
    panel.get_by_role("button", name="Start training").click()
    expect(page.locator(".toast.success").last).to_contain_text("Started ui-run")

    runs = api.get("/training/runs")["data"]
    run = next(r for r in runs if r["name"] == "ui-run")
    assert run["config"]["hook_name"] == f"blocks.{LAYER}.hook_resid_post"
    assert run["config"]["d_sae"] == 2 * 576 and run["config"]["k"] == 16
    assert run["config"]["batch_size_tokens"] == 512 and run["config"]["total_tokens"] == 6144

    open_trained = panel.get_by_role("button", name="Open the trained SAE")
    expect(open_trained).to_be_visible(timeout=240_000)
    run = api.get(f"/training/runs/{run['id']}")["run"]
    assert run["state"] == "completed" and run["sae_id"]
    # The charts were drawn from the streamed metrics: the loss chart's label carries
    # the number of points, one per training step.
    label = panel.get_by_role("img", name="Loss:").get_attribute("aria-label")
    points, latest = re.fullmatch(r"Loss: (\d+) points, latest (\S+)", label).groups()
    assert int(points) == run["total_steps"] > 1
    assert float(latest) == pytest.approx(run["latest"]["loss"], rel=1e-3)
    page.screenshot(path=artifacts_dir / "training.png", full_page=True)

    # --- SAEs: the run links to its SAE; check compatibility, attach ---------------------
    open_trained.click()
    panel = page.locator("#panel-saes")
    expect(panel).to_be_visible()
    card = panel.locator(f'[data-sae-id="{run["sae_id"]}"]')
    expect(card).to_have_class(re.compile(r"\bhighlight\b"))
    card.get_by_role("button", name="Attach").click()
    expect(card.locator(".compat")).to_contain_text("✓ Compatible")
    expect(card.get_by_label("Layer")).to_have_value(str(LAYER))
    card.get_by_role("button", name="Attach", exact=True).click()
    expect(page.locator("#status-sae")).to_contain_text(f"blocks.{LAYER}.hook_resid_post")
    assert api.get("/saes/attachments")["data"][0]["sae_id"] == run["sae_id"]
    page.screenshot(path=artifacts_dir / "saes.png", full_page=True)

    # --- Steering: add a feature, set its strength exactly ------------------------------
    panel = open_tab(page, "steering")
    panel.get_by_label("Feature index", exact=True).fill(str(FEATURE))
    panel.get_by_label("Label", exact=True).fill("flow feature")
    panel.get_by_role("button", name="Add feature").click()
    exact = panel.get_by_label(f"Exact strength of feature {FEATURE}")
    exact.fill(str(STRENGTH))
    expected = [
        {
            "index": FEATURE,
            "mode": "add",
            "strength": STRENGTH,
            "normalize": False,
            "label": "flow feature",
        }
    ]
    wait_until(
        lambda: api.get("/steering")["live"]["features"] == expected, "the steering to be saved"
    )
    # The slider follows the exact value, to within one of its steps; its range comes
    # from the feature's maximum activation in the training statistics.
    slider = panel.get_by_label(f"Strength of feature {FEATURE}", exact=True)
    observed = api.get("/steering")["max_activations"].get(str(FEATURE))
    span = float(slider.get_attribute("max"))
    # A feature that never fired in training has no maximum: the page's default span.
    assert span == (math.ceil(observed * 2) if observed else 50)
    assert float(slider.get_attribute("min")) == -span
    assert abs(float(slider.input_value()) - STRENGTH) <= float(slider.get_attribute("step"))
    # Try it: the default reply is what the model says with no steering at all.
    prompt = "Write one sentence about the sea."
    panel.get_by_label("Prompt to try").fill(prompt)
    panel.get_by_label("Maximum tokens").fill("12")
    panel.get_by_role("button", name="Compare").click()
    expect(panel.locator(".steered-reply")).not_to_be_empty(timeout=60_000)
    client = openai.OpenAI(base_url=ui_stack.http_url + "/v1", api_key="unused")
    unsteered = client.chat.completions.create(
        model=api.served_model(),
        messages=[{"role": "user", "content": prompt}],
        max_tokens=12,
        temperature=0,
        extra_body={"millm": {"steering": "off"}},
    )
    expect(panel.locator(".default-reply")).to_have_text(unsteered.choices[0].message.content)
    page.screenshot(path=artifacts_dir / "steering.png", full_page=True)

    # --- Profiles: save the live steering ---------------------------------------------
    panel = open_tab(page, "profiles")
    panel.get_by_label("Profile name", exact=True).fill(PROFILE)
    panel.get_by_label("Description").first.fill("made in the browser")
    panel.get_by_role("button", name="Save profile").click()
    card = panel.locator(f'[data-profile="{PROFILE}"]')
    model = api.served_model()
    expect(card.locator(".chat-id")).to_have_text(f"{model}:{PROFILE}")
    saved = api.get(f"/profiles/{PROFILE}")
    assert [(f["index"], f["strength"]) for f in saved["features"]] == [(FEATURE, STRENGTH)]
    assert saved["sae"]["sae_id"] == run["sae_id"]
    page.screenshot(path=artifacts_dir / "profiles.png", full_page=True)

    # --- Monitor: a chat through the openai SDK with model:profile shows up live ------------
    panel = open_tab(page, "monitor")
    expect(panel.locator(".badge", has_text="live")).to_be_visible()
    reply = client.chat.completions.create(
        model=f"{model}:{PROFILE}",
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=8,
        temperature=0,
    )
    request_id = reply.id.removeprefix("chatcmpl-")
    shown = panel.locator(f'[data-request-id="{request_id}"]')
    expect(shown).to_be_visible(timeout=30_000)
    # Every prompt and generated token that was read appears, each shaded by a feature.
    prompt_tokens = reply.usage.prompt_tokens
    expect(shown.locator(".tok")).to_have_count(prompt_tokens + reply.usage.completion_tokens - 1)
    expect(panel.locator("table.data tbody tr").first).to_be_visible()
    page.screenshot(path=artifacts_dir / "monitor.png", full_page=True)

    panel = open_tab(page, "features")
    expect(panel.get_by_role("button", name="Compute statistics")).to_be_visible()
    page.screenshot(path=artifacts_dir / "features.png", full_page=True)

    open_tab(page, "models")
    page.screenshot(path=artifacts_dir / "models.png", full_page=True)
    for tab in TABS:
        assert (artifacts_dir / f"{tab}.png").stat().st_size > 20_000, tab
    assert unexpected_errors(page) == []
