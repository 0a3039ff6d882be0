from __future__ import annotations

import pytest

from inference_service.operations.repository import INTERRUPTED_MESSAGE, Operations
from inference_service.operations.types import OperationKind, OperationState
from inference_service.storage import Database, RecordNotFoundError

RECORD_ID = "HuggingFaceTB/SmolLM2-135M-Instruct@main"


def test_operation_lifecycle(database: Database) -> None:
    with database.session() as session:
        created = Operations(session).create(
            id="op-1",
            kind=OperationKind.MODEL_DOWNLOAD,
            target=RECORD_ID,
        )
    assert created.state is OperationState.PENDING
    # 0: unknown total, not finished
    assert (created.bytes_done, created.bytes_total, created.finished_at_unix_ms) == (0, 0, 0)

    with database.session() as session:
        Operations(session).update_progress(
            "op-1",
            bytes_done=10,
            bytes_total=100,
            stage="downloading",
            state=OperationState.RUNNING,
        )
        Operations(session).update_progress("op-1", bytes_done=50)
    op = database.run(lambda session: Operations(session).get("op-1"))
    assert op is not None
    assert (op.state, op.stage, op.bytes_done, op.bytes_total) == (
        OperationState.RUNNING,
        "downloading",
        50,
        100,
    )

    failed = database.run(
        lambda session: Operations(session).finish("op-1", OperationState.FAILED, "disk full")
    )
    assert failed.done
    assert failed.error_message == "disk full"
    assert failed.finished_at_unix_ms >= failed.created_at_unix_ms > 0

    # A finished operation stays finished.
    with pytest.raises(ValueError, match="already finished"), database.session() as session:
        Operations(session).update_progress("op-1", bytes_done=60)
    with pytest.raises(ValueError), database.session() as session:
        Operations(session).update_progress("op-1", bytes_done=1, state=OperationState.SUCCEEDED)
    with pytest.raises(RecordNotFoundError), database.session() as session:
        Operations(session).update_progress("op-missing", bytes_done=1)
    assert database.run(lambda session: Operations(session).get("op-missing")) is None


def test_operations_pagination_and_filters(database: Database) -> None:
    with database.session() as session:
        for i in range(25):
            kind = OperationKind.TRAINING if i % 5 == 0 else OperationKind.MODEL_DOWNLOAD
            Operations(session).create(id=f"op-{i:02d}", kind=kind, target="t")
    with database.session() as session:
        Operations(session).finish("op-03", OperationState.SUCCEEDED)
        Operations(session).finish("op-04", OperationState.CANCELLED)

    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = database.run(lambda session, o=offset: Operations(session).list(limit=10, offset=o))
        assert len(page.items) <= 10
        seen += [op.id for op in page.items]
        offset = page.next_offset
    assert seen == [f"op-{i:02d}" for i in reversed(range(25))]

    exact = database.run(
        lambda session: Operations(session).list(limit=5, kind=OperationKind.TRAINING)
    )
    assert [op.id for op in exact.items] == ["op-20", "op-15", "op-10", "op-05", "op-00"]
    assert exact.next_offset is None

    finished = database.run(
        lambda session: Operations(session).list(
            states=[OperationState.SUCCEEDED, OperationState.CANCELLED]
        ),
    )
    assert [op.id for op in finished.items] == ["op-04", "op-03"]
    with pytest.raises(ValueError):
        database.run(lambda session: Operations(session).list(limit=0))


def test_restart_recovery(database: Database) -> None:
    with database.session() as session:
        Operations(session).create(id="pending", kind="sae_download", target="x")
        Operations(session).create(
            id="running", kind="training", target="y", state=OperationState.RUNNING
        )
        Operations(session).create(id="done", kind="training", target="z")
        Operations(session).finish("done", OperationState.SUCCEEDED)

    unfinished = database.run(lambda session: Operations(session).list_unfinished())
    assert [op.id for op in unfinished] == ["pending", "running"]
    ids = [op.id for op in unfinished] + ["done"]
    assert database.run(lambda session: Operations(session).mark_interrupted(ids)) == 2
    assert database.run(lambda session: Operations(session).list_unfinished()) == ()
    for op_id in ("pending", "running"):
        op = database.run(lambda session, i=op_id: Operations(session).get(i))
        assert op is not None
        assert (op.state, op.error_message) == (OperationState.FAILED, INTERRUPTED_MESSAGE)
    done = database.run(lambda session: Operations(session).get("done"))
    assert done is not None and done.state is OperationState.SUCCEEDED
    assert database.run(lambda session: Operations(session).mark_interrupted([])) == 0
