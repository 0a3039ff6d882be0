"""MonitoringService over a real grpc.aio server, with the real hub fed from another thread."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import pytest
import torch
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from inference_service.interceptors import ErrorInterceptor
from inference_service.monitoring.hub import MonitorHub
from inference_service.monitoring.types import Selection
from inference_service.sae.active import ActiveSaeSlot
from inference_service.servicers.monitoring import MonitoringServicer
from millm.v1 import monitoring_service_pb2 as pb
from millm.v1 import monitoring_service_pb2_grpc as pb_grpc
from tests.fixtures.saes import active_sae
from tests.unit.monitoring.helpers import make_capture, sparse_activations

D_SAE = 100


@dataclass
class Served:
    hub: MonitorHub
    stub: pb_grpc.MonitoringServiceStub
    slot: ActiveSaeSlot  # what the servicer reads the attached SAE from

    async def publish(self, acts: torch.Tensor, request_id: str) -> None:
        """Publishes from another thread, as the worker lane does."""
        await asyncio.to_thread(self.hub.publish, make_capture(acts, request_id))


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    hub = MonitorHub(asyncio.get_running_loop(), history_frames=50, subscriber_queue_frames=16)
    slot = ActiveSaeSlot()
    slot.swap(active_sae(d_sae=D_SAE))
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    pb_grpc.add_MonitoringServiceServicer_to_server(MonitoringServicer(hub, slot.get), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield Served(hub, pb_grpc.MonitoringServiceStub(channel), slot)
    await channel.close()
    await server.stop(0)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.005)


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error) or status_pb2.Status()
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


async def _expect_invalid(awaitable, text: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert _reason(caught.value) == "INVALID_ARGUMENT"
    assert text in caught.value.details()


def _indices(values) -> list[int]:
    return [v.index for v in values]


async def test_monitor_streams_frames_follows_selection_changes_pauses_and_cleans_up(served):
    hub = served.hub
    call = served.stub.Monitor()
    await call.write(pb.MonitorRequest(features=[3, 7]))
    await until(lambda: hub.subscriber_count == 1)

    acts = sparse_activations(4, D_SAE, seed=1)
    await served.publish(acts, "a")
    first = await asyncio.wait_for(call.read(), 5)
    assert first.frame.request_id == "a"
    assert first.dropped_frames == 0
    assert [t.position for t in first.frame.tokens] == [0, 1, 2, 3]
    for row, token in enumerate(first.frame.tokens):
        assert _indices(token.features) == [3, 7]
        assert [v.value for v in token.features] == pytest.approx(acts[row, [3, 7]].tolist())
        assert list(token.top) == []

    await call.write(pb.MonitorRequest(features=[5], top_k=2))
    await until(lambda: hub.subscriptions[0].selection == Selection((5,), 2))
    await served.publish(acts, "b")
    second = await asyncio.wait_for(call.read(), 5)
    assert second.frame.request_id == "b"
    top = torch.topk(acts, 2, dim=-1).indices.tolist()
    for row, token in enumerate(second.frame.tokens):
        assert _indices(token.features) == [5]
        assert _indices(token.top) == top[row][: len(token.top)]

    await call.write(pb.MonitorRequest(paused=True))
    await until(lambda: hub.subscriptions[0].paused)
    assert not hub.wants_capture()
    await served.publish(acts, "while-paused")
    await call.write(pb.MonitorRequest(paused=False))  # no selection: keeps (5,), top 2
    await until(lambda: not hub.subscriptions[0].paused)
    await served.publish(acts, "c")
    third = await asyncio.wait_for(call.read(), 5)
    assert third.frame.request_id == "c"  # nothing from the pause arrived
    assert _indices(third.frame.tokens[0].features) == [5]

    call.cancel()
    await until(lambda: hub.subscriber_count == 0)


async def test_monitor_keeps_streaming_after_the_client_stops_writing(served):
    call = served.stub.Monitor()
    await call.write(pb.MonitorRequest(top_k=1))
    await call.done_writing()
    await until(lambda: served.hub.subscriber_count == 1)

    await served.publish(sparse_activations(2, D_SAE, seed=2), "late")

    assert (await asyncio.wait_for(call.read(), 5)).frame.request_id == "late"
    call.cancel()
    await until(lambda: served.hub.subscriber_count == 0)


async def test_monitor_before_an_sae_is_attached_gets_frames_once_one_is(served):
    served.slot.swap(None)
    call = served.stub.Monitor()
    await call.write(pb.MonitorRequest(features=[2, 5000], top_k=1))  # 5000: unknown yet
    await until(lambda: served.hub.subscriber_count == 1)

    served.hub.reset(D_SAE)
    await served.publish(sparse_activations(2, D_SAE, seed=3), "first")

    response = await asyncio.wait_for(call.read(), 5)
    assert _indices(response.frame.tokens[0].features) == [2]  # the SAE has no feature 5000
    call.cancel()
    await until(lambda: served.hub.subscriber_count == 0)


@pytest.mark.parametrize(
    ("request_message", "text"),
    [
        (pb.MonitorRequest(features=list(range(65))), "At most 64 features"),
        (pb.MonitorRequest(top_k=65), "top_k must be between 0 and 64"),
        (pb.MonitorRequest(features=[D_SAE]), f"0 to {D_SAE - 1}"),
    ],
)
async def test_monitor_rejects_a_bad_first_selection(served, request_message, text):
    call = served.stub.Monitor()
    await call.write(request_message)
    await _expect_invalid(call.read(), text)
    assert served.hub.subscriber_count == 0


async def test_monitor_rejects_a_bad_later_selection_and_cleans_up(served):
    call = served.stub.Monitor()
    await call.write(pb.MonitorRequest(top_k=1))
    await until(lambda: served.hub.subscriber_count == 1)

    await call.write(pb.MonitorRequest(top_k=65))

    await _expect_invalid(call.read(), "top_k")
    await until(lambda: served.hub.subscriber_count == 0)


async def test_config_round_trip_and_subscriber_count(served):
    got = await served.stub.GetMonitoringConfig(pb.GetMonitoringConfigRequest())
    assert got.config == pb.MonitoringConfig(record_history=False, top_k=10, history_frames=50)
    assert got.subscribers == 0

    wanted = pb.MonitoringConfig(record_history=True, top_k=4, features=[9, 1, 9])
    applied = await served.stub.SetMonitoringConfig(pb.SetMonitoringConfigRequest(config=wanted))
    # history_frames 0 keeps the size; repeated features are kept once.
    expected = pb.MonitoringConfig(record_history=True, top_k=4, features=[9, 1], history_frames=50)
    assert applied.config == expected

    call = served.stub.Monitor()
    await call.write(pb.MonitorRequest(top_k=1))
    await until(lambda: served.hub.subscriber_count == 1)
    got = await served.stub.GetMonitoringConfig(pb.GetMonitoringConfigRequest())
    assert got.config == expected
    assert got.subscribers == 1
    call.cancel()


@pytest.mark.parametrize(
    ("config", "text"),
    [
        (pb.MonitoringConfig(top_k=65), "top_k must be between 1 and 64"),
        (pb.MonitoringConfig(top_k=3, features=list(range(65))), "At most 64 features"),
        (pb.MonitoringConfig(top_k=3, features=[D_SAE]), f"0 to {D_SAE - 1}"),
        (pb.MonitoringConfig(top_k=3, history_frames=10**6), "history_frames"),
    ],
)
async def test_bad_configs_are_invalid_arguments(served, config, text):
    await _expect_invalid(
        served.stub.SetMonitoringConfig(pb.SetMonitoringConfigRequest(config=config)), text
    )


async def _record(served: Served, count: int) -> list[torch.Tensor]:
    await served.stub.SetMonitoringConfig(
        pb.SetMonitoringConfigRequest(
            config=pb.MonitoringConfig(record_history=True, top_k=3, features=[0, 8])
        )
    )
    captured = [sparse_activations(3, D_SAE, seed=n) for n in range(count)]
    for n, acts in enumerate(captured):
        await served.publish(acts, f"r{n}")
    return captured


async def test_history_returns_the_newest_frames_oldest_first(served):
    await _record(served, 4)

    everything = await served.stub.GetMonitoringHistory(pb.GetMonitoringHistoryRequest())
    newest = await served.stub.GetMonitoringHistory(pb.GetMonitoringHistoryRequest(limit=2))
    one = await served.stub.GetMonitoringHistory(pb.GetMonitoringHistoryRequest(request_id="r1"))

    assert [f.request_id for f in everything.frames] == ["r0", "r1", "r2", "r3"]
    assert [f.request_id for f in newest.frames] == ["r2", "r3"]
    assert [f.request_id for f in one.frames] == ["r1"]
    assert _indices(one.frames[0].tokens[0].features) == [0, 8]


async def test_statistics_match_the_captured_tensors(served):
    everything = torch.cat(await _record(served, 3))  # [9, d_sae]
    active = everything > 0

    response = await served.stub.GetFeatureStatistics(
        pb.GetFeatureStatisticsRequest(features=[6, 0])
    )

    assert response.tokens == 9
    assert [s.index for s in response.features] == [6, 0]
    for s in response.features:
        on = active[:, s.index]
        assert s.count == int(on.sum())
        assert s.fraction_active == pytest.approx(int(on.sum()) / 9)
        if s.count:
            column = everything[on, s.index]
            assert (s.min, s.max) == pytest.approx((float(column.min()), float(column.max())))
            assert s.mean == pytest.approx(float(column.mean()))

    top = await served.stub.GetFeatureStatistics(pb.GetFeatureStatisticsRequest(limit=3))
    counts = active.sum(dim=0)
    assert [s.index for s in top.features] == sorted(
        range(D_SAE), key=lambda i: (-int(counts[i]), i)
    )[:3]
    await _expect_invalid(
        served.stub.GetFeatureStatistics(pb.GetFeatureStatisticsRequest(features=[D_SAE])),
        f"0 to {D_SAE - 1}",
    )


async def test_export_json_and_csv_and_clear(served):
    await _record(served, 2)

    as_json = await served.stub.ExportMonitoringHistory(pb.ExportMonitoringHistoryRequest())
    assert as_json.content_type == "application/json"
    frames = json.loads(as_json.data)
    assert [f["request_id"] for f in frames] == ["r0", "r1"]
    assert [v["index"] for v in frames[0]["tokens"][0]["features"]] == [0, 8]

    as_csv = await served.stub.ExportMonitoringHistory(
        pb.ExportMonitoringHistoryRequest(format="csv")
    )
    assert as_csv.content_type == "text/csv"
    rows = list(csv.reader(io.StringIO(as_csv.data)))
    assert rows[0][:4] == ["request_id", "source", "hook_name", "captured_at_unix_ms"]
    values = sum(len(t["features"]) + len(t["top"]) for f in frames for t in f["tokens"])
    assert len(rows) == 1 + values

    await _expect_invalid(
        served.stub.ExportMonitoringHistory(pb.ExportMonitoringHistoryRequest(format="xml")),
        "'xml'",
    )

    await served.stub.ClearMonitoringHistory(pb.ClearMonitoringHistoryRequest())
    history = await served.stub.GetMonitoringHistory(pb.GetMonitoringHistoryRequest())
    stats = await served.stub.GetFeatureStatistics(pb.GetFeatureStatisticsRequest())
    assert list(history.frames) == []
    assert stats.tokens == 0 and list(stats.features) == []
