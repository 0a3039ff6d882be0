"""The attachment history: one open row at most, closed by each new attach, and the
live steering written onto it."""

from __future__ import annotations

from inference_service.sae.attachment_history import AttachmentHistory
from inference_service.steering import persisted
from inference_service.steering.types import SteeringFeature, SteeringSet
from inference_service.storage import Database


def _open(history: AttachmentHistory, sae_id: str, closing_as: str = "replaced") -> str:
    return history.opened(
        sae_id=sae_id,
        hook_name="blocks.9.hook_resid_post",
        model_id="smollm2",
        dtype="bfloat16",
        sae_bytes=1234,
        closing_as=closing_as,
    )


def test_each_attach_closes_the_open_row_and_detach_closes_its_own(database: Database) -> None:
    history = AttachmentHistory(database)
    assert history.last_open() is None
    first = _open(history, "sae-a")
    second = _open(history, "sae-b")
    last = history.last_open()
    assert last is not None and (last.id, last.sae_id, last.dtype) == (second, "sae-b", "bfloat16")
    newest = history.newest()
    assert [(e.id, e.ended_by) for e in newest] == [(second, None), (first, "replaced")]
    assert newest[1].detached_at is not None and newest[0].detached_at is None
    history.closed("detached", first)  # already closed: unchanged
    assert history.newest()[1].ended_by == "replaced"
    history.closed("detached", second)
    assert history.last_open() is None
    assert history.newest()[0].ended_by == "detached"


def test_the_live_steering_round_trips_on_the_open_row(database: Database) -> None:
    history = AttachmentHistory(database)
    row = _open(history, "sae-a")
    steering = SteeringSet(
        (
            SteeringFeature(3, "add", 5.5, normalize=True, label="cats"),
            SteeringFeature(7, "clamp", -1.25),
        ),
        enabled=False,
    )
    history.save_steering(row, persisted.dumps(steering))
    last = history.last_open()
    assert last is not None and last.steering_json is not None
    assert persisted.loads(last.steering_json) == steering
