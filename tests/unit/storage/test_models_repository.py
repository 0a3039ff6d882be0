from __future__ import annotations

from datetime import UTC
from pathlib import Path

import pytest

from inference_service.models.repository import ModelRecords
from inference_service.models.types import CachedModelState, ModelFile, ModelFormat
from inference_service.operations.repository import Operations
from inference_service.operations.types import OperationKind
from inference_service.storage import Database, RecordNotFoundError
from inference_service.storage.tables import ModelFileRow

DATA = Path("/data")
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
        "local_dir": DATA / "models/smollm2",
    }
    with db.session() as session:
        ModelRecords(session, DATA).upsert(**{**values, **overrides})  # type: ignore[arg-type]


def test_model_record_crud(database: Database) -> None:
    with database.session() as session:
        created = ModelRecords(session, DATA).upsert(
            repo_id=REPO,
            revision="main",
            format=ModelFormat.SAFETENSORS,
            local_dir=DATA / "models/smollm2",
            parameter_count=134_515_008,
        )
    assert created.id == RECORD_ID
    assert created.state is CachedModelState.DOWNLOADING
    assert created.created_at.tzinfo is UTC

    with database.session() as session:
        ModelRecords(session, DATA).replace_files(RECORD_ID, FILES)
        ModelRecords(session, DATA).set_state(RECORD_ID, CachedModelState.READY)
    record = database.run(lambda session: ModelRecords(session, DATA).get(RECORD_ID))
    assert record is not None
    assert record.state is CachedModelState.READY
    assert record.files == tuple(FILES)
    assert record.size_bytes == sum(f.size_bytes for f in FILES)
    assert record.parameter_count == 134_515_008

    # Upsert overwrites the fields but keeps created_at and the files.
    _add_record(database, commit_sha="c" * 40, state=CachedModelState.READY, size_bytes=5)
    again = database.run(lambda session: ModelRecords(session, DATA).get(RECORD_ID))
    assert again is not None
    assert again.commit_sha == "c" * 40
    assert again.created_at == created.created_at
    assert again.updated_at >= record.updated_at
    assert again.files == tuple(FILES)

    _add_record(database, revision="v2", format=ModelFormat.GGUF)
    listed = database.run(lambda session: ModelRecords(session, DATA).list())
    assert [r.id for r in listed] == [RECORD_ID, f"{REPO}@v2"]
    ready = database.run(
        lambda session: ModelRecords(session, DATA).list(state=CachedModelState.READY)
    )
    assert [r.id for r in ready] == [RECORD_ID]

    with database.session() as session:
        ModelRecords(session, DATA).replace_files(RECORD_ID, FILES[:1])
    record = database.run(lambda session: ModelRecords(session, DATA).get(RECORD_ID))
    assert record is not None
    assert record.files == tuple(FILES[:1])

    assert database.run(lambda session: ModelRecords(session, DATA).delete(RECORD_ID)) is True
    assert database.run(lambda session: ModelRecords(session, DATA).delete(RECORD_ID)) is False
    assert database.run(lambda session: ModelRecords(session, DATA).get(RECORD_ID)) is None


def test_missing_model_record_raises(database: Database) -> None:
    with pytest.raises(RecordNotFoundError), database.session() as session:
        ModelRecords(session, DATA).set_state("nope@main", CachedModelState.READY)
    with pytest.raises(RecordNotFoundError), database.session() as session:
        ModelRecords(session, DATA).replace_files("nope@main", FILES)


def test_delete_cascades_to_files(database: Database) -> None:
    _add_record(database)
    with database.session() as session:
        ModelRecords(session, DATA).replace_files(RECORD_ID, FILES)
    database.run(lambda session: ModelRecords(session, DATA).delete(RECORD_ID))
    with database.session() as session:
        assert session.query(ModelFileRow).count() == 0


def test_check_constraints_reject_unknown_states(database: Database) -> None:
    _add_record(database)
    with pytest.raises(ValueError), database.session() as session:
        ModelRecords(session, DATA).set_state(RECORD_ID, "exploded")  # type: ignore[arg-type]


def test_rollback_on_error_leaves_nothing(database: Database) -> None:
    with pytest.raises(RuntimeError, match="boom"), database.session() as session:
        ModelRecords(session, DATA).upsert(
            repo_id=REPO, revision="main", format=ModelFormat.GGUF, local_dir=DATA / "m"
        )
        ModelRecords(session, DATA).replace_files(RECORD_ID, FILES)
        Operations(session).create(id="op-1", kind=OperationKind.MODEL_DOWNLOAD, target=RECORD_ID)
        raise RuntimeError("boom")
    with database.session() as session:
        assert ModelRecords(session, DATA).list() == ()
        assert Operations(session).count() == 0
    with database.session() as session:
        assert session.query(ModelFileRow).count() == 0
