"""An SAE's whole life through the bridge on the real stack: download with progress over
the WebSocket, compatibility, attach while the OpenAI API keeps answering, detach, delete."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from websockets.sync.client import connect

from tests.fixtures.saes import folder_files, random_sae, write_sae

pytestmark = pytest.mark.e2e

SITE = "blocks.5.hook_resid_post"


def _greedy(client: openai.OpenAI) -> str:
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "Name a fruit."}],
        temperature=0,
        max_tokens=12,
    )
    return reply.choices[0].message.content or ""


def test_download_attach_chat_detach_delete(stack, tmp_path):
    sae = write_sae(tmp_path / "l5", random_sae(hook_name=SITE, seed=21))
    stack.hub.add_repo("acme/e2e-saes", {f"{SITE}/{n}": b for n, b in folder_files(sae).items()})
    api = httpx.Client(base_url=f"{stack.http_url}/api/v1", timeout=60)
    client = openai.OpenAI(base_url=f"{stack.http_url}/v1", api_key="unused", max_retries=0)

    preview = api.post("/saes/preview", json={"repo_id": "acme/e2e-saes"})
    assert preview.status_code == 200
    [candidate] = preview.json()["candidates"]
    assert (candidate["path"], candidate["d_in"], candidate["layer"]) == (SITE, 576, 5)

    started = api.post("/saes/download", json={"repo_id": "acme/e2e-saes", "path": SITE})
    assert started.status_code == 202
    operation = started.json()
    ws_url = (
        stack.http_url.replace("http://", "ws://") + f"/api/v1/operations/{operation['id']}/watch"
    )
    with connect(ws_url) as ws:
        snapshots = [json.loads(message)["operation"] for message in ws]
    assert snapshots[-1]["state"] == "succeeded" and snapshots[-1]["kind"] == "sae_download"
    assert snapshots[-1]["bytes_done"] == snapshots[-1]["bytes_total"] == candidate["size_bytes"]
    sae_id = operation["target"]

    listed = api.get(f"/saes/{sae_id}").json()
    assert (listed["state"], listed["d_in"], listed["hook_name"]) == ("ready", 576, SITE)
    check = api.post(f"/saes/{sae_id}/compatibility", json={}).json()
    assert check["compatible"] is True and check["module_name"] == "model.layers.5"
    bad_layer = api.post(f"/saes/{sae_id}/attach", json={"hook_name": "blocks.40.hook_resid_post"})
    assert bad_layer.status_code == 400
    assert bad_layer.json()["error"]["message"] == (
        "Layer 40 does not exist. Model has 30 layers (0-29)."
    )

    before = _greedy(client)
    attached = api.post(f"/saes/{sae_id}/attach", json={})
    assert attached.status_code == 200 and attached.json()["attachment"]["hook_name"] == SITE
    assert _greedy(client) == before  # attached, nothing steered: the same tokens
    refused = api.delete(f"/saes/{sae_id}")
    assert refused.status_code == 409 and refused.headers["x-should-retry"] == "false"

    detached = api.post("/saes/detach", json={})
    assert detached.status_code == 200 and detached.json()["freed_bytes"] > 0
    assert api.get("/saes/attachments").json()["data"] == []
    assert api.delete(f"/saes/{sae_id}").status_code == 200
    assert api.get(f"/saes/{sae_id}").status_code == 404
