"""EventService over real gRPC with the built-in model, and /api/v1/events through the
real bridge: attach, steering and profile changes arrive as typed events, in order,
numbered one by one, and a watch resumes after a sequence."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from websockets.asyncio.client import connect

from inference_service.events import Event
from inference_service.operations.manager import OperationFinished
from inference_service.operations.types import OperationSnapshot, OperationState
from inference_service.servicers.events_convert import event_message
from inference_service.training.manager import TrainingRunChanged
from inference_service.training.types import TrainingState
from millm.v1 import event_service_pb2 as epb
from millm.v1 import event_service_pb2_grpc as epb_grpc
from millm.v1 import inference_service_pb2 as ipb
from millm.v1 import model_service_pb2 as mpb
from millm.v1 import model_service_pb2_grpc as mpb_grpc
from millm.v1 import profile_service_pb2 as ppb
from millm.v1 import profile_service_pb2_grpc as ppb_grpc
from millm.v1 import sae_service_pb2 as spb
from millm.v1 import sae_service_pb2_grpc as spb_grpc
from millm.v1 import steering_pb2 as stpb
from millm.v1 import steering_service_pb2 as sspb
from millm.v1 import steering_service_pb2_grpc as sspb_grpc
from millm.v1 import training_pb2
from tests.contract.test_bridge_management import serve_bridge
from tests.fixtures.saes import random_sae, write_sae
from tests.fixtures.servers import running_server

HOOK = "blocks.9.hook_resid_post"
FEATURE = stpb.SteeringFeature(index=7, mode=stpb.STEERING_MODE_ADD, strength=4.0)


@pytest.fixture(scope="module")
async def server(data_dir, tmp_path_factory):
    async with running_server(data_dir, tmp_path_factory.mktemp("event-service")) as srv:
        yield srv


@pytest.fixture(scope="module")
async def sae_id(server, tmp_path_factory):
    folder = write_sae(tmp_path_factory.mktemp("event-sae") / "l9", random_sae(seed=11))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        imported = await spb_grpc.SaeServiceStub(channel).ImportSae(
            spb.ImportSaeRequest(path=str(folder), name="events-sae")
        )
    return imported.sae.id


@pytest.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(autouse=True)
async def _clean_after(server):
    yield
    await asyncio.to_thread(server.profiles.deactivate)
    if server.saes.attachments.list():
        await server.saes.detach("")


async def _read(stream, count: int) -> list[epb.Event]:
    events = []
    async with asyncio.timeout(30):
        async for response in stream:
            events.append(response.event)
            if len(events) == count:
                break
    return events


def _kinds(events: list[epb.Event]) -> list[str]:
    return [e.WhichOneof("payload") or "" for e in events]


async def test_changes_arrive_typed_in_order_and_a_watch_resumes_after_a_sequence(
    server, sae_id, channel
):
    events = epb_grpc.EventServiceStub(channel)
    cursor = server.events.last_sequence  # the model's load was published before this
    saes = spb_grpc.SaeServiceStub(channel)
    steering = sspb_grpc.SteeringServiceStub(channel)
    profiles = ppb_grpc.ProfileServiceStub(channel)

    await saes.AttachSae(spb.AttachSaeRequest(id=sae_id, hook_name=HOOK))
    await steering.SetSteering(sspb.SetSteeringRequest(features=[FEATURE]))
    await profiles.CreateProfile(ppb.CreateProfileRequest(name="loud", features=[FEATURE]))
    await profiles.ActivateProfile(ppb.ActivateProfileRequest(name="loud"))
    await saes.DetachSae(spb.DetachSaeRequest())

    got = await _read(events.WatchEvents(epb.WatchEventsRequest(after_sequence=cursor)), 7)
    assert _kinds(got) == [
        "sae_attached",
        "steering_changed",  # the live features
        "profile_changed",  # created
        "steering_changed",  # the profile steers
        "profile_changed",  # activated
        "steering_changed",  # the detach dropped what named the SAE's features
        "sae_detached",
    ]
    assert [e.sequence for e in got] == list(range(cursor + 1, cursor + 8))
    assert all(e.occurred_at_unix_ms > 1_700_000_000_000 for e in got)
    attached, live, created, by_profile, activated, cleared, detached = got
    assert (attached.sae_attached.sae_id, attached.sae_attached.hook_name) == (sae_id, HOOK)
    assert attached.sae_attached.sae_name == "events-sae"
    assert attached.sae_attached.model_id == server.host.engine.description.id
    assert live.steering_changed.source == epb.STEERING_SOURCE_GLOBAL
    assert list(live.steering_changed.live.features) == [FEATURE]
    assert live.steering_changed.active_profile == ""
    assert (created.profile_changed.name, created.profile_changed.change) == (
        "loud",
        epb.PROFILE_CHANGE_CREATED,
    )
    assert by_profile.steering_changed.source == epb.STEERING_SOURCE_PROFILE
    assert by_profile.steering_changed.active_profile == "loud"
    assert list(by_profile.steering_changed.effective.features) == [FEATURE]
    assert activated.profile_changed.change == epb.PROFILE_CHANGE_ACTIVATED
    assert cleared.steering_changed.source == epb.STEERING_SOURCE_SAE
    assert list(cleared.steering_changed.live.features) == []
    assert (detached.sae_detached.sae_id, detached.sae_detached.with_model) == (sae_id, False)

    # Resuming after the profile's creation replays only what came later.
    resumed = await _read(
        events.WatchEvents(epb.WatchEventsRequest(after_sequence=created.sequence)), 4
    )
    assert resumed == got[3:]


async def test_a_live_watch_sees_a_change_made_by_another_client(server, sae_id, channel):
    events = epb_grpc.EventServiceStub(channel)
    stream = events.WatchEvents(epb.WatchEventsRequest())
    await _until_subscribed(server, 1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as other:
        await spb_grpc.SaeServiceStub(other).AttachSae(
            spb.AttachSaeRequest(id=sae_id, hook_name=HOOK)
        )
    [event] = await _read(stream, 1)
    stream.cancel()
    assert event.sae_attached.sae_id == sae_id
    await _until_subscribed(server, 0)  # a cancelled watch leaves the bus


async def test_a_too_old_cursor_starts_with_a_resync(server, channel):
    events = epb_grpc.EventServiceStub(channel)
    [first] = await _read(events.WatchEvents(epb.WatchEventsRequest(after_sequence=1)), 1)
    assert first.resync.reason == epb.RESYNC_REASON_CURSOR_TOO_OLD


async def test_training_and_operation_payloads_convert(server):
    """The kinds no quick real change produces here, through the same conversion."""
    run = event_message(Event(5, 1, TrainingRunChanged("r1", TrainingState.RUNNING)))
    assert (run.training_run_changed.run_id, run.training_run_changed.state) == (
        "r1",
        training_pb2.TRAINING_STATE_RUNNING,
    )
    gone = event_message(Event(6, 1, TrainingRunChanged("r1", None)))
    assert gone.training_run_changed.deleted
    snapshot = OperationSnapshot(
        id="op1",
        kind="sae_download",
        state=OperationState.SUCCEEDED,
        stage="done",
        target="acme/sae",
        created_at_unix_ms=1,
        updated_at_unix_ms=2,
    )
    done = event_message(Event(7, 1, OperationFinished(snapshot)))
    assert done.operation_finished.operation.id == "op1"
    with pytest.raises(TypeError):
        event_message(Event(8, 1, object()))


async def _until_subscribed(server, count: int) -> None:
    async with asyncio.timeout(10):
        while server.events.subscriber_count != count:  # noqa: ASYNC110 (a test polls)
            await asyncio.sleep(0.01)


# ---------------------------------------------------------------- the bridge's WebSocket


async def test_the_bridge_relays_events_as_json_and_resumes_with_after(server, sae_id):
    async with serve_bridge(f"127.0.0.1:{server.port}") as host:
        async with connect(f"ws://{host}/api/v1/events") as ws:
            await _until_subscribed(server, 1)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                await spb_grpc.SaeServiceStub(channel).AttachSae(
                    spb.AttachSaeRequest(id=sae_id, hook_name=HOOK)
                )
                await sspb_grpc.SteeringServiceStub(channel).SetSteering(
                    sspb.SetSteeringRequest(features=[FEATURE])
                )
            attached = json.loads(await asyncio.wait_for(ws.recv(), 10))
            steered = json.loads(await asyncio.wait_for(ws.recv(), 10))
        model_id = server.host.engine.description.id
        assert attached == {
            "type": "sae_attached",
            "sequence": attached["sequence"],
            "occurred_at_unix_ms": attached["occurred_at_unix_ms"],
            "sae_attached": {
                "sae_id": sae_id,
                "sae_name": "events-sae",
                "hook_name": HOOK,
                "model_id": model_id,
            },
        }
        assert isinstance(attached["sequence"], int)
        assert steered["type"] == "steering_changed"
        assert steered["sequence"] == attached["sequence"] + 1
        assert steered["steering_changed"]["source"] == "global"
        assert steered["steering_changed"]["live"]["features"] == [
            {"index": 7, "mode": "add", "strength": 4.0, "normalize": False, "label": None}
        ]

        # Reconnecting with the attach's sequence replays the steering change.
        async with connect(f"ws://{host}/api/v1/events?after={attached['sequence']}") as ws:
            replayed = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert replayed == steered

        async with connect(f"ws://{host}/api/v1/events?after=1") as ws:
            resync = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert resync["type"] == "resync"
        assert resync["resync"] == {"reason": "cursor_too_old"}

        async with connect(f"ws://{host}/api/v1/events?after=soon") as ws:
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await ws.wait_closed()
        assert error["type"] == "error"
        assert error["error"]["param"] == "after"
        assert ws.close_code == 1008


async def test_unloading_and_loading_the_model_is_published(server, sae_id, channel):
    """Last in this module: it reloads the model. The attached SAE goes with it."""
    cursor = server.events.last_sequence
    await spb_grpc.SaeServiceStub(channel).AttachSae(
        spb.AttachSaeRequest(id=sae_id, hook_name=HOOK)
    )
    model_id = server.host.engine.description.id
    models = mpb_grpc.ModelServiceStub(channel)
    await models.UnloadModel(mpb.UnloadModelRequest())
    await models.LoadModel(mpb.LoadModelRequest(id="builtin"))
    got = await _read(
        epb_grpc.EventServiceStub(channel).WatchEvents(
            epb.WatchEventsRequest(after_sequence=cursor)
        ),
        5,
    )
    assert _kinds(got) == [
        "sae_attached",
        "sae_detached",
        "model_state_changed",
        "model_state_changed",
        "model_state_changed",
    ]
    assert got[1].sae_detached.with_model and got[1].sae_detached.model_id == model_id
    states = [(e.model_state_changed.state, e.model_state_changed.model_id) for e in got[2:]]
    assert states == [
        (ipb.MODEL_STATE_NOT_LOADED, ""),
        (ipb.MODEL_STATE_LOADING, ""),
        (ipb.MODEL_STATE_READY, server.host.engine.description.id),
    ]
