"""The management REST API and progress WebSocket through the bridge, on the real stack."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from websockets.sync.client import connect

pytestmark = pytest.mark.e2e

WEIGHTS = os.urandom(300_000)


def test_download_with_progress_over_websocket_then_delete(stack):
    stack.hub.add_repo("acme/e2e-small", {"config.json": b"{}", "model.safetensors": WEIGHTS})
    stack.hub.slow("model.safetensors", 400_000, repo_id="acme/e2e-small")
    api = httpx.Client(base_url=f"{stack.http_url}/api/v1", timeout=30)

    started = api.post("/models/download", json={"repo_id": "acme/e2e-small"})
    assert started.status_code == 202
    operation_id = started.json()["id"]

    ws_url = stack.http_url.replace("http://", "ws://") + f"/api/v1/operations/{operation_id}/watch"
    with connect(ws_url) as ws:
        frames = [json.loads(message) for message in ws]
    snapshots = [f["operation"] for f in frames]
    assert all(f["type"] == "operation" for f in frames)
    assert snapshots[-1]["state"] == "succeeded"
    assert [s["bytes_done"] for s in snapshots] == sorted(s["bytes_done"] for s in snapshots)
    assert snapshots[-1]["bytes_done"] == snapshots[-1]["bytes_total"] == len(WEIGHTS) + 2
    assert any(s["state"] == "running" and s["stage"] == "downloading" for s in snapshots)

    # A reloaded page reads the same operation back.
    assert api.get(f"/operations/{operation_id}").json()["state"] == "succeeded"
    model = api.get("/models/acme/e2e-small@main").json()
    assert (model["state"], model["format"], model["loaded"]) == ("ready", "safetensors", False)
    assert "builtin" in [m["id"] for m in api.get("/models").json()["data"]]

    deleted = api.delete("/models/acme/e2e-small@main")
    assert deleted.status_code == 200 and deleted.json()["freed_bytes"] >= len(WEIGHTS)
    missing = api.get("/models/acme/e2e-small@main")
    assert missing.status_code == 404 and missing.json()["error"]["type"]


def test_management_errors_use_the_openai_envelope(stack):
    api = httpx.Client(base_url=f"{stack.http_url}/api/v1", timeout=30)
    bad = api.post("/models/download", json={"repo_id": "no-slash"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "repo_id"
    builtin = api.delete("/models/builtin")
    assert builtin.status_code == 409
    estimate = api.post(
        "/models/builtin/estimate", json={"dtype": "bfloat16", "context_tokens": 1024}
    )
    assert estimate.status_code == 200 and estimate.json()["fits"] is True
