from __future__ import annotations

from datetime import UTC

import pytest

from inference_service.storage import (
    INTERRUPTED_MESSAGE,
    Database,
    ModelFile,
    ModelFormat,
    ModelState,
    OperationKind,
    OperationState,
    RecordNotFoundError,
    run,
    transaction,
)
from inference_service.storage.tables import ModelFileRow

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
RECORD_ID = f"{REPO}@main"
FILES = [
    ModelFile("config.json", 800, "a" * 64, verified=True),
    ModelFile("model.safetensors", 269_060_552, None),
]


def _add_record(db: Database, **overrides: object) -> None:
    values: dict[str, object] = {
        "repo_id": REPO,
        "revision": "main",
        "format": ModelFormat.SAFETENSORS,
        "local_dir": "models/smollm2",
    }
    with transaction(db) as tx:
        tx.model_records.upsert(**{**values, **overrides})  # type: ignore[arg-type]


def test_model_record_crud(database: Database) -> None:
    with transaction(database) as tx:
        created = tx.model_records.upsert(
            repo_id=REPO,
            revision="main",
            format=ModelFormat.SAFETENSORS,
            local_dir="models/smollm2",
            parameter_count=134_515_008,
        )
    assert created.id == RECORD_ID
    assert created.state is ModelState.DOWNLOADING
    assert created.created_at.tzinfo is UTC

    with transaction(database) as tx:
        tx.model_records.replace_files(RECORD_ID, FILES)
        tx.model_records.set_state(RECORD_ID, ModelState.READY)
    record = run(database, lambda tx: tx.model_records.get(RECORD_ID))
    assert record is not None
    assert record.state is ModelState.READY
    assert record.files == tuple(FILES)
    assert record.size_bytes == sum(f.size_bytes for f in FILES)
    assert record.parameter_count == 134_515_008

    # Upsert overwrites the fields but keeps created_at and the files.
    _add_record(database, commit_sha="c" * 40, state=ModelState.READY, size_bytes=5)
    again = run(database, lambda tx: tx.model_records.get(RECORD_ID))
    assert again is not None
    assert again.commit_sha == "c" * 40
    assert again.created_at == created.created_at
    assert again.updated_at >= record.updated_at
    assert again.files == tuple(FILES)

    _add_record(database, revision="v2", format=ModelFormat.GGUF)
    listed = run(database, lambda tx: tx.model_records.list())
    assert [r.id for r in listed] == [RECORD_ID, f"{REPO}@v2"]
    ready = run(database, lambda tx: tx.model_records.list(state=ModelState.READY))
    assert [r.id for r in ready] == [RECORD_ID]

    with transaction(database) as tx:
        tx.model_records.replace_files(RECORD_ID, FILES[:1])
    record = run(database, lambda tx: tx.model_records.get(RECORD_ID))
    assert record is not None
    assert record.files == tuple(FILES[:1])

    assert run(database, lambda tx: tx.model_records.delete(RECORD_ID)) is True
    assert run(database, lambda tx: tx.model_records.delete(RECORD_ID)) is False
    assert run(database, lambda tx: tx.model_records.get(RECORD_ID)) is None


def test_missing_model_record_raises(database: Database) -> None:
    with pytest.raises(RecordNotFoundError), transaction(database) as tx:
        tx.model_records.set_state("nope@main", ModelState.READY)
    with pytest.raises(RecordNotFoundError), transaction(database) as tx:
        tx.model_records.replace_files("nope@main", FILES)


def test_delete_cascades_to_files(database: Database) -> None:
    _add_record(database)
    with transaction(database) as tx:
        tx.model_records.replace_files(RECORD_ID, FILES)
    run(database, lambda tx: tx.model_records.delete(RECORD_ID))
    with database.session() as session:
        assert session.query(ModelFileRow).count() == 0


def test_check_constraints_reject_unknown_states(database: Database) -> None:
    _add_record(database)
    with pytest.raises(ValueError), transaction(database) as tx:
        tx.model_records.set_state(RECORD_ID, "exploded")  # type: ignore[arg-type]


def test_rollback_on_error_leaves_nothing(database: Database) -> None:
    with pytest.raises(RuntimeError, match="boom"), transaction(database) as tx:
        tx.model_records.upsert(
            repo_id=REPO, revision="main", format=ModelFormat.GGUF, local_dir="m"
        )
        tx.model_records.replace_files(RECORD_ID, FILES)
        tx.operations.create(id="op-1", kind=OperationKind.MODEL_DOWNLOAD, target=RECORD_ID)
        raise RuntimeError("boom")
    with transaction(database) as tx:
        assert tx.model_records.list() == ()
        assert tx.operations.count() == 0
    with database.session() as session:
        assert session.query(ModelFileRow).count() == 0


def test_operation_lifecycle(database: Database) -> None:
    with transaction(database) as tx:
        created = tx.operations.create(
            id="op-1",
            kind=OperationKind.MODEL_DOWNLOAD,
            target=RECORD_ID,
            params_json='{"revision": "main"}',
        )
    assert created.state is OperationState.PENDING
    assert (created.bytes_done, created.bytes_total, created.finished_at) == (0, None, None)

    with transaction(database) as tx:
        tx.operations.update_progress(
            "op-1",
            bytes_done=10,
            bytes_total=100,
            stage="downloading",
            state=OperationState.RUNNING,
        )
        tx.operations.update_progress("op-1", bytes_done=50)
    op = run(database, lambda tx: tx.operations.get("op-1"))
    assert op is not None
    assert (op.state, op.stage, op.bytes_done, op.bytes_total) == (
        OperationState.RUNNING,
        "downloading",
        50,
        100,
    )
    assert op.params_json == '{"revision": "main"}'

    failed = run(
        database, lambda tx: tx.operations.finish("op-1", OperationState.FAILED, "disk full")
    )
    assert failed.finished
    assert failed.error_message == "disk full"
    assert failed.finished_at is not None and failed.finished_at >= failed.created_at

    # A finished operation stays finished.
    with pytest.raises(ValueError, match="already finished"), transaction(database) as tx:
        tx.operations.update_progress("op-1", bytes_done=60)
    with pytest.raises(ValueError), transaction(database) as tx:
        tx.operations.update_progress("op-1", bytes_done=1, state=OperationState.SUCCEEDED)
    with pytest.raises(RecordNotFoundError), transaction(database) as tx:
        tx.operations.update_progress("op-missing", bytes_done=1)
    assert run(database, lambda tx: tx.operations.get("op-missing")) is None


def test_operations_pagination_and_filters(database: Database) -> None:
    with transaction(database) as tx:
        for i in range(25):
            kind = OperationKind.TRAINING if i % 5 == 0 else OperationKind.MODEL_DOWNLOAD
            tx.operations.create(id=f"op-{i:02d}", kind=kind, target="t")
    with transaction(database) as tx:
        tx.operations.finish("op-03", OperationState.SUCCEEDED)
        tx.operations.finish("op-04", OperationState.CANCELLED)

    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = run(database, lambda tx, o=offset: tx.operations.list(limit=10, offset=o))
        assert len(page.items) <= 10
        seen += [op.id for op in page.items]
        offset = page.next_offset
    assert seen == [f"op-{i:02d}" for i in reversed(range(25))]

    exact = run(database, lambda tx: tx.operations.list(limit=5, kind=OperationKind.TRAINING))
    assert [op.id for op in exact.items] == ["op-20", "op-15", "op-10", "op-05", "op-00"]
    assert exact.next_offset is None

    finished = run(
        database,
        lambda tx: tx.operations.list(states=[OperationState.SUCCEEDED, OperationState.CANCELLED]),
    )
    assert [op.id for op in finished.items] == ["op-04", "op-03"]
    with pytest.raises(ValueError):
        run(database, lambda tx: tx.operations.list(limit=0))


def test_restart_recovery(database: Database) -> None:
    with transaction(database) as tx:
        tx.operations.create(id="pending", kind="sae_download", target="x")
        tx.operations.create(
            id="running", kind="training", target="y", state=OperationState.RUNNING
        )
        tx.operations.create(id="done", kind="training", target="z")
        tx.operations.finish("done", OperationState.SUCCEEDED)

    unfinished = run(database, lambda tx: tx.operations.list_unfinished())
    assert [op.id for op in unfinished] == ["pending", "running"]
    ids = [op.id for op in unfinished] + ["done"]
    assert run(database, lambda tx: tx.operations.mark_interrupted(ids)) == 2
    assert run(database, lambda tx: tx.operations.list_unfinished()) == ()
    for op_id in ("pending", "running"):
        op = run(database, lambda tx, i=op_id: tx.operations.get(i))
        assert op is not None
        assert (op.state, op.error_message) == (OperationState.FAILED, INTERRUPTED_MESSAGE)
    done = run(database, lambda tx: tx.operations.get("done"))
    assert done is not None and done.state is OperationState.SUCCEEDED
    assert run(database, lambda tx: tx.operations.mark_interrupted([])) == 0
