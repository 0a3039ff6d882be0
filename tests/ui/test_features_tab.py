"""The Features tab against the real service: statistics over a corpus with progress,
search by text, a feature's dashboard, a label saved and found again, Neuronpedia
labels imported, contrastive search, and steering with a feature."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.fixtures.corpus import write_jsonl
from tests.ui.steps import Api, open_tab, unexpected_errors, wait_until

pytestmark = pytest.mark.e2e

# Small enough for a 2-core machine, large enough that most features of a random
# SAE fire somewhere; read from an uploaded corpus, which the built-in sample (the
# model's own writing, generated on first use) would take minutes to match.
STATISTICS_TOKENS = 2000


def test_find_label_and_steer_with_a_feature(ui_stack, page, tmp_path, artifacts_dir):
    api = Api(ui_stack.http_url)
    sae = api.attach_random_sae(tmp_path / "features", "features-sae", d_sae=64)
    corpus = api.http.post(
        "/api/v1/training/corpora?name=features.jsonl",
        content=write_jsonl(tmp_path / "features.jsonl", count=200).read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    ).json()["corpus"]
    page.goto(ui_stack.http_url + "/#features")
    panel = open_tab(page, "features")
    expect(panel.get_by_label("SAE", exact=True)).to_have_value(sae["id"])

    # Statistics: an operation whose progress shows until it succeeds.
    panel.get_by_label("Corpus", exact=True).select_option(corpus["id"])
    panel.get_by_label("Tokens at most").fill(str(STATISTICS_TOKENS))
    panel.get_by_role("button", name="Compute statistics").click()
    row = panel.locator(".operation")
    expect(row).to_be_visible()
    operation_id = row.get_attribute("data-operation-id")
    wait_until(
        lambda: api.get(f"/operations/{operation_id}")["done"],
        "the statistics to finish",
        timeout_s=240,
    )
    finished = api.get(f"/operations/{operation_id}")
    assert finished["state"] == "succeeded", finished["error_message"]
    expect(row).to_contain_text("succeeded")

    # Search by text: ranked features, the text's tokens shaded by the picked one.
    panel.get_by_label("Text", exact=True).fill("A GOOD BREAKFAST! Eggs, toast and coffee.")
    panel.get_by_role("button", name="Find features").click()
    hits = panel.locator("table.text-hits tbody tr")
    expect(hits.first).to_be_visible(timeout=30_000)
    tokens = panel.locator(".token-line .tok")
    assert tokens.count() > 5
    shaded = [t.get_attribute("style") for t in tokens.all()]
    assert any("rgb(22, 27, 34)" not in style for style in shaded), shaded
    index = int(hits.first.get_attribute("data-feature"))

    # Its dashboard: statistics, histogram, contexts, the logit lens.
    hits.first.get_by_role("button", name=f"Open feature {index}").click()
    feature = panel.locator(f'#feature-dashboard article[data-feature="{index}"]')
    expect(feature).to_be_visible()
    expect(feature.get_by_role("img", name="Activation histogram")).to_be_visible()
    expect(feature.locator(".contexts li").first).to_be_visible()
    expect(feature.get_by_role("list", name="Promoted tokens").locator("li")).to_have_count(10)
    dashboard = api.get(f"/saes/{sae['id']}/features/{index}")
    assert dashboard["statistics"]["tokens"] > 0

    # A label, saved and found again by a label search.
    feature.get_by_label("Label", exact=True).fill("breakfast words")
    feature.get_by_label("Notes").fill("seen on a test text")
    feature.get_by_role("button", name="Save label").click()
    wait_until(
        lambda: any(
            label["index"] == index and label["label"] == "breakfast words"
            for label in api.get(f"/saes/{sae['id']}/labels")["data"]
        ),
        "the label to be stored",
    )
    panel.get_by_label("Find in labels and notes").fill("BREAKFAST")
    panel.get_by_role("button", name="Search", exact=True).click()
    expect(panel.locator(f'.labels li[data-feature="{index}"]')).to_contain_text("breakfast words")

    # Neuronpedia's explanations, imported from a file.
    other = (index + 1) % 64
    explanations = tmp_path / "explanations.json"
    explanations.write_text(json.dumps([{"index": str(other), "description": "the next one"}]))
    panel.get_by_label("Labels file").set_input_files(explanations)
    panel.get_by_label("Format").select_option("neuronpedia")
    panel.get_by_role("button", name="Import", exact=True).click()
    panel.get_by_label("Find in labels and notes").fill("")
    panel.get_by_role("button", name="Search", exact=True).click()
    expect(panel.locator(f'.labels li[data-feature="{other}"]')).to_contain_text("the next one")

    # Contrastive search against the texts' upper-case copies.
    panel.get_by_label("Texts with the behaviour").fill(
        "Good morning, how are you?\nThe weather is nice today.\nI like green tea."
    )
    expect(panel.get_by_label("Contrast with their upper-case copy")).to_be_checked()
    panel.get_by_role("button", name="Contrast", exact=True).click()
    expect(panel.locator("table.contrast-hits tbody tr").first).to_be_visible(timeout=60_000)

    # Steer with the dashboard's feature at the suggested strength.
    strength = float(feature.get_by_label("Strength (add)").input_value())
    feature.get_by_role("button", name="Steer with this feature").click()
    expect(feature.locator(".steered-notice")).to_contain_text(f"Feature {index} is in the live")
    live = api.get("/steering")["live"]["features"]
    assert [(f["index"], f["strength"], f["label"]) for f in live] == [
        (index, pytest.approx(strength), "breakfast words")
    ]
    page.screenshot(path=artifacts_dir / "features-dashboard.png", full_page=True)
    feature.get_by_role("button", name="Open Steering").click()
    steering = page.locator("#panel-steering")
    expect(steering).to_be_visible()
    expect(steering.locator(f'.feature-row[data-feature="{index}"]')).to_be_visible()
    assert unexpected_errors(page) == []
