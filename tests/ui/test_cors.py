"""CORS in a real browser: a page from another origin calls the API with `fetch`, the
way a browser chat app does. Chromium sends the preflight, then the call, and lets the
page read the answer only when the bridge names the page's origin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page

from tests.fixtures.stack import second_bridge
from tests.ui.steps import Api

pytestmark = pytest.mark.e2e

KEY = "sk-cors-test"
# A page to run `fetch` in: one of the admin UI's files, so no app script runs.
PAGE = "/favicon.svg"
# Resolves a fetch to what the page could see of it: the status, the JSON and the
# exposed x-request-id; or, when the browser refused the answer, the error's name.
FETCH_JS = """async ([url, headers, body]) => {
  try {
    const response = await fetch(url, {method: "POST", headers, body: JSON.stringify(body)});
    return {status: response.status, json: await response.json(),
            requestId: response.headers.get("x-request-id")};
  } catch (error) {
    return {thrown: error.name};
  }
}"""


@pytest.fixture(scope="module")
def cors_bridge(ui_stack, tmp_path_factory) -> Iterator[str]:
    """A second bridge, keyed, in front of the UI stack's inference service, that lets
    pages from the UI stack's origin call it."""
    env = {
        "MILLM_API_KEY": KEY,
        "MILLM_CORS_ORIGINS": f"http://app.invalid:1, {ui_stack.http_url}",
    }
    log = tmp_path_factory.mktemp("cors") / "bridge.log"
    with second_bridge(ui_stack.grpc_address, log, env) as url:
        yield url


def embed(page: Page, url: str, model: str, key: str | None = KEY) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}  # not CORS-safelisted: a preflight
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return page.evaluate(
        FETCH_JS, [f"{url}/v1/embeddings", headers, {"model": model, "input": "hi"}]
    )


def test_a_listed_origin_calls_the_api_and_reads_its_errors(cors_bridge, ui_stack, page):
    model = Api(ui_stack.http_url).served_model()
    page.goto(ui_stack.http_url + PAGE)

    # The preflight carries no key, yet passes; the call itself carries it.
    answer = embed(page, cors_bridge, model)
    assert answer["status"] == 200, answer
    assert len(answer["json"]["data"][0]["embedding"]) > 0
    assert answer["requestId"]

    # An error is readable too, so the page can tell its user what went wrong.
    refused = embed(page, cors_bridge, model, key="wrong")
    assert refused["status"] == 401, refused
    assert refused["json"]["error"]["code"] == "invalid_api_key"
    assert refused["requestId"]


def test_other_origins_get_no_answer(cors_bridge, ui_stack, page):
    model = Api(ui_stack.http_url).served_model()
    # The UI stack's bridge has no MILLM_CORS_ORIGINS: no origin but its own.
    page.goto(cors_bridge + PAGE)
    assert embed(page, ui_stack.http_url, model) == {"thrown": "TypeError"}

    # The same server under another name is another origin, not in the list.
    port = urlsplit(ui_stack.http_url).port
    page.goto(f"http://localhost:{port}{PAGE}")
    assert embed(page, cors_bridge, model) == {"thrown": "TypeError"}
