"""Prometheus metrics, scraped over real HTTP and parsed with prometheus_client's parser:
the inference service's own endpoint after a real generation, the bridge's /metrics
by route template, and the documented names (docs/metrics.md, the Grafana dashboard)
against what the registries really export."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import grpc
import httpx
import jsonschema
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from inference_service.config import InferenceSettings
from inference_service.host import ModelHost
from inference_service.interceptors import ErrorInterceptor
from inference_service.metrics import ServiceMetrics, ServingSources
from inference_service.operations.types import OperationSnapshot, OperationState
from inference_service.sae.active import ActiveSaeSlot
from inference_service.steering.state import SteeringState
from inference_service.steering.types import SteeringFeature
from millm.v1 import inference_service_pb2 as pb
from millm.v1 import operations_service_pb2_grpc as ospb_grpc
from openai_bridge.metrics import BridgeMetrics
from tests.conftest import REPO_ROOT, free_port
from tests.contract.conftest import bridge_for
from tests.contract.test_bridge_management import ScriptedManagement, serve_bridge
from tests.fixtures.saes import active_sae
from tests.fixtures.servers import running_server

DOCS = REPO_ROOT / "docs"
WATCH_ROUTE = "/api/v1/operations/{operation_id}/watch"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample as {(name, labels): value}, through prometheus_client's own parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def usage_of(sse: str) -> dict:
    """The usage chunk of a streamed chat completion."""
    chunks = [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: {")]
    return next(chunk["usage"] for chunk in chunks if chunk.get("usage"))


async def test_a_real_generation_is_counted_by_the_service_and_the_bridge(data_dir, tmp_path):
    # quantization none: the prefix cache, whose tokens are counted, is on only there.
    async with running_server(
        data_dir, tmp_path, metrics_port=free_port(), quantization="none"
    ) as server:
        assert server.metrics_port is not None
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        http, calls = bridge_for(f"127.0.0.1:{server.port}")
        try:
            async with httpx.AsyncClient() as scraper, http:
                model = (await http.get("/v1/models")).json()["data"][0]["id"]
                # The same prompt once before: the measured one reuses its prefix.
                warm = {"role": "user", "content": "Name a colour."}
                await http.post(
                    "/v1/chat/completions",
                    json={"model": model, "messages": [warm], "max_tokens": 1},
                )
                before = await scrape(scraper, url)
                response = await http.post(
                    "/v1/chat/completions",
                    json={
                        "model": model,
                        "messages": [{"role": "user", "content": "Name a colour."}],
                        "max_tokens": 8,
                        "temperature": 0,
                        "stream": True,
                        "stream_options": {"include_usage": True},
                    },
                )
                assert response.status_code == 200
                usage = usage_of(response.text)
                # The lane records a decode step's batch size after the step, whose last
                # token may already have reached the client: wait for it (bounded).
                steps = usage["completion_tokens"] - 1
                deadline = asyncio.get_running_loop().time() + 5
                while True:
                    after = await scrape(scraper, url)
                    counted = value(after, "millm_decode_batch_rows_count")
                    settled = counted - value(before, "millm_decode_batch_rows_count") >= steps
                    if settled or asyncio.get_running_loop().time() > deadline:
                        break
                    await asyncio.sleep(0.05)
                bridge = parse((await http.get("/metrics")).text)
        finally:
            await calls.close()

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert usage["completion_tokens"] > 0
    # One first token, and one gap between each two tokens after it.
    assert grew("millm_time_to_first_token_seconds_count") == 1
    assert grew("millm_inter_token_latency_seconds_count") == usage["completion_tokens"] - 1
    assert grew("millm_generation_tokens_total") == usage["completion_tokens"]
    assert grew("millm_prompt_tokens_total") == usage["prompt_tokens"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert grew("millm_prompt_cached_tokens_total") == cached == usage["prompt_tokens"] - 1
    assert grew("millm_requests_total", kind="generation", outcome="admitted") == 1
    finished = sum(
        grew("millm_generations_finished_total", finish_reason=r) for r in ("stop", "length")
    )
    assert finished == 1
    # Every decode step after the prefill had this one sequence in it.
    assert grew("millm_decode_batch_rows_count") == usage["completion_tokens"] - 1
    assert grew("millm_decode_batch_rows_sum") == usage["completion_tokens"] - 1
    assert value(after, "millm_model_state", state="ready") == 1
    assert value(after, "millm_model_info", model_id=model) == 1
    assert value(after, "millm_queue_depth") == 0
    assert value(after, "millm_kv_cache_capacity_bytes") > 0
    assert value(after, "millm_sae_attached") == 0
    assert value(after, "process_resident_memory_bytes") > 0

    chat = {"method": "POST", "route": "/v1/chat/completions"}
    # Two chats: the warm-up and the measured one.
    assert value(bridge, "millm_bridge_http_requests_total", **chat, status="200") == 2
    assert value(bridge, "millm_bridge_http_request_duration_seconds_count", **chat) == 2
    assert value(bridge, "millm_bridge_http_requests_in_progress", **chat) == 0
    assert value(bridge, "millm_bridge_streams_in_progress", route=chat["route"]) == 0
    models = {"method": "GET", "route": "/v1/models", "status": "200"}
    assert value(bridge, "millm_bridge_http_requests_total", **models) == 1


async def test_bridge_labels_requests_by_route_template_and_status(scripted_server, servicer):
    _, address = scripted_server
    http, calls = bridge_for(address)
    async with http:
        servicer.script = [
            pb.GenerateResponse(delta=pb.TokenDelta(text="Hi", token_ids=[1])),
            pb.GenerateResponse(
                finished=pb.GenerateFinished(
                    finish_reason=pb.FINISH_REASON_STOP,
                    usage=pb.Usage(prompt_tokens=3, completion_tokens=1),
                )
            ),
        ]
        for model in ("first", "second/with-a-slash", "third"):
            await http.get(f"/v1/models/{model}")
        assert (await http.post("/v1/embeddings", json={"model": "m", "input": "x"})).is_success
        assert (await http.post("/v1/embeddings", json={"model": "m"})).status_code == 400
        assert (await http.post("/v1/nowhere/123")).status_code == 404
        assert (await http.delete("/v1/embeddings")).status_code == 405
        assert (await http.get("/")).status_code == 200  # the admin UI
        streamed = await http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True},
        )
        assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
        metrics = await http.get("/metrics")
    await calls.close()

    assert metrics.status_code == 200
    samples = parse(metrics.text)
    requests = {
        dict(labels)["route"]: dict(labels)
        for (name, labels) in samples
        if name == "millm_bridge_http_requests_total"
    }
    # One template for three model ids: no series per id.
    model_routes = [r for r in requests if r.startswith("/v1/models/")]
    assert model_routes == ["/v1/models/{model_id:path}"]
    total = "millm_bridge_http_requests_total"
    assert value(samples, total, method="POST", route="/v1/embeddings", status="200") == 1
    assert value(samples, total, method="POST", route="/v1/embeddings", status="400") == 1
    assert value(samples, total, method="POST", route="<unmatched>", status="404") == 1
    assert value(samples, total, method="DELETE", route="/v1/embeddings", status="405") == 1
    assert value(samples, total, method="GET", route="<admin_ui>", status="200") == 1
    chat = {"method": "POST", "route": "/v1/chat/completions"}
    assert value(samples, total, **chat, status="200") == 1
    assert value(samples, "millm_bridge_http_request_duration_seconds_count", **chat) == 1
    # The scrape itself is in progress while it is written, and only then counted.
    scraping = {"method": "GET", "route": "/metrics"}
    assert value(samples, "millm_bridge_http_requests_in_progress", **scraping) == 1
    assert not any("nowhere" in dict(labels).get("route", "") for (_, labels) in samples)


async def test_bridge_metrics_need_the_key_when_one_is_set_unless_public(scripted_server):
    _, address = scripted_server
    for public, without_key in ((False, 401), (True, 200)):
        http, calls = bridge_for(address, api_key="sk-test", metrics_public=public)
        async with http:
            assert (await http.get("/metrics")).status_code == without_key
            keyed = await http.get("/metrics", headers={"Authorization": "Bearer sk-test"})
            assert keyed.status_code == 200
            refused = parse(keyed.text)
        await calls.close()
        status = str(without_key)
        assert (
            value(
                refused,
                "millm_bridge_http_requests_total",
                method="GET",
                route="/metrics",
                status=status,
            )
            == 1
        )


async def test_bridge_counts_open_websockets_by_route():
    servicer = ScriptedManagement()
    servicer.hang_watch = True  # the watch stays open after its first snapshot
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    ospb_grpc.add_OperationsServiceServicer_to_server(servicer, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        during, after = await _open_and_close_a_watch(address)
    finally:
        await server.stop(0)
    route = {"route": WATCH_ROUTE}
    assert value(during, "millm_bridge_websockets_open", **route) == 1
    assert value(during, "millm_bridge_websocket_connections_total", **route) == 1
    assert value(after, "millm_bridge_websockets_open", **route) == 0
    assert value(after, "millm_bridge_websocket_connections_total", **route) == 1


async def _open_and_close_a_watch(address: str) -> tuple[Samples, Samples]:
    """/metrics while a WebSocket is open, and once it has closed."""
    async with serve_bridge(address) as host, httpx.AsyncClient() as http:
        url = f"http://{host}/metrics"
        async with connect(f"ws://{host}/api/v1/operations/op-1/watch") as ws:
            await ws.recv()
            during = await scrape(http, url)
        for _ in range(200):  # the server sees the close a moment later
            after = await scrape(http, url)
            if value(after, "millm_bridge_websockets_open", route=WATCH_ROUTE) == 0:
                break
            await asyncio.sleep(0.01)
    return during, after


def test_serving_gauges_follow_the_attached_sae_and_steering(tmp_path):
    slot = ActiveSaeSlot()
    steering = SteeringState(slot.get)
    metrics = ServiceMetrics()
    metrics.watch(
        ServingSources(
            host=ModelHost(InferenceSettings(data_dir=tmp_path)),
            active_sae=slot.get,
            steering=steering,
            training_run=lambda: None,
            operations=tuple,
        )
    )

    def read() -> Samples:
        return parse(generate_latest(metrics.registry).decode())

    idle = read()
    assert value(idle, "millm_sae_attached") == 0
    assert value(idle, "millm_model_state", state="not_loaded") == 1
    assert value(idle, "millm_steering_active") == 0

    slot.swap(active_sae(sae_id="sae-7", sae_name="caps", d_sae=32, model_name="smollm2"))
    steering.set_live([SteeringFeature(3, "add", 2.0), SteeringFeature(4, "add", 0.0)])
    attached = read()
    assert value(attached, "millm_sae_attached") == 1
    info = {
        "sae_id": "sae-7",
        "sae_name": "caps",
        "hook": "blocks.9.hook_resid_post",
        "model": "smollm2",
    }
    assert value(attached, "millm_sae_info", **info) == 1
    assert value(attached, "millm_sae_features") == 32
    assert value(attached, "millm_steering_active") == 1
    assert value(attached, "millm_steering_features") == 1  # strength 0 changes nothing
    steering.set_enabled(False)
    assert value(read(), "millm_steering_active") == 0


def test_training_and_operations_are_read_from_their_managers(tmp_path):
    running_run: list[str] = []
    operations: list[OperationSnapshot] = []
    metrics = ServiceMetrics()
    slot = ActiveSaeSlot()
    metrics.watch(
        ServingSources(
            host=ModelHost(InferenceSettings(data_dir=tmp_path)),
            active_sae=slot.get,
            steering=SteeringState(slot.get),
            training_run=lambda: running_run[0] if running_run else None,
            operations=lambda: operations,
        )
    )

    def read() -> Samples:
        return parse(generate_latest(metrics.registry).decode())

    def step(n: int, *, evaluation: bool = False) -> dict:
        return {"step": n, "tokens": n * 4096, "tokens_per_s": 2000.0 + n, "eval": evaluation}

    running_run.append("run-1")
    metrics.training.on_steps([step(1), step(2)])
    metrics.training.on_steps([step(2, evaluation=True), step(3)])
    training = read()
    assert value(training, "millm_training_active") == 1
    assert value(training, "millm_training_steps_total") == 3  # the evaluation is no step
    assert value(training, "millm_training_tokens_total") == 3 * 4096
    assert value(training, "millm_training_tokens_per_second") == 2003.0
    running_run.clear()
    assert value(read(), "millm_training_tokens_per_second") == 0

    def op(id_: str, kind: str, state: OperationState, done: int) -> OperationSnapshot:
        return OperationSnapshot(id_, kind, state, "x", "repo", bytes_done=done)

    operations += [
        op("a", "model_download", OperationState.SUCCEEDED, 1000),
        op("b", "model_download", OperationState.FAILED, 10),
        op("c", "sae_download", OperationState.RUNNING, 500),
        op("d", "model_download", OperationState.SUCCEEDED, 2000),
    ]
    ops = read()
    finished = "millm_operations_finished_total"
    assert value(ops, finished, kind="model_download", state="succeeded") == 2
    assert value(ops, finished, kind="model_download", state="failed") == 1
    assert value(ops, "millm_operations_running", kind="sae_download") == 1
    assert value(ops, "millm_operations_running", kind="model_download") == 0
    assert value(ops, "millm_operation_bytes_total", kind="model_download") == 3010
    assert value(ops, "millm_operation_bytes_total", kind="sae_download") == 500


def _exported_names() -> set[str]:
    """Every metric family the two registries export (the serving collector included)."""
    service = ServiceMetrics()
    slot = ActiveSaeSlot()
    service.watch(
        ServingSources(
            host=ModelHost(InferenceSettings(data_dir=Path("/nonexistent"))),
            active_sae=slot.get,
            steering=SteeringState(slot.get),
            training_run=lambda: None,
            operations=tuple,
        )
    )
    names = {m.name for m in service.registry.collect()}
    names |= {m.name for m in BridgeMetrics().registry.collect()}
    return {n for n in names if n.startswith("millm_")}


def _documented_names() -> set[str]:
    table = (DOCS / "metrics.md").read_text()
    names = re.findall(r"^\| `(millm_[a-z_]+)`", table, flags=re.MULTILINE)
    return {_SUFFIXES.sub("", name) for name in names}


_SUFFIXES = re.compile(r"_(bucket|sum|count|total|created)$")

# Enough of Grafana's dashboard model to catch a broken file: what the import needs.
_DASHBOARD_SCHEMA = {
    "type": "object",
    "required": ["title", "panels", "schemaVersion", "templating"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer"},
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "title", "type", "gridPos", "targets"],
                "properties": {
                    "id": {"type": "integer"},
                    "type": {"enum": ["timeseries", "stat", "gauge", "table"]},
                    "gridPos": {
                        "type": "object",
                        "required": ["x", "y", "w", "h"],
                        "properties": {k: {"type": "integer"} for k in ("x", "y", "w", "h")},
                    },
                    "targets": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["expr", "refId"],
                            "properties": {"expr": {"type": "string", "minLength": 1}},
                        },
                    },
                },
            },
        },
    },
}


def test_docs_list_exactly_the_exported_metrics():
    exported = _exported_names()
    documented = _documented_names()
    assert exported - documented == set(), "exported but not in docs/metrics.md"
    assert documented - exported == set(), "in docs/metrics.md but not exported"


def test_grafana_dashboard_is_valid_and_uses_only_exported_metrics():
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    jsonschema.validate(dashboard, _DASHBOARD_SCHEMA)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exported = _exported_names()
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\bmillm_[a-z_]+", target["expr"]):
                used.add(_SUFFIXES.sub("", name))
    assert used, "the dashboard queries no miLLM metric"
    assert used - exported == set()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("first token", "tokens/s", "queue", "batch", "kv cache", "status", "sae"):
        assert topic in titles, topic
