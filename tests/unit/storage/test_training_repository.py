from __future__ import annotations

import math
from datetime import UTC
from typing import Any

import pytest
from alembic import command
from sqlalchemy import delete, func, inspect, select
from sqlalchemy.exc import IntegrityError

from inference_service.storage import Database, RecordExistsError, RecordNotFoundError
from inference_service.storage.database import alembic_config
from inference_service.storage.tables import TrainingMetricRow, TrainingRunRow
from inference_service.training.repository import (
    TRAINING_INTERRUPTED_STAGE,
    Corpora,
    TrainingMetrics,
    TrainingRuns,
    TrainingTemplates,
)
from inference_service.training.types import TRAINING_METRIC_FIELDS, TrainingRun, TrainingState

CONFIG = {"hook_name": "blocks.9.hook_resid_post", "d_sae": 4608, "learning_rate": 3e-4}
MODEL = "smollm2-135m-instruct"
TRAINING_TABLES = {"training_runs", "training_metrics", "training_templates", "corpora"}


def _run_id(i: int) -> str:
    return f"{i:032x}"


def _create_run(db: Database, i: int, **overrides: Any) -> TrainingRun:
    values: dict[str, Any] = {
        "record_id": _run_id(i),
        "name": f"run {i}",
        "model": MODEL,
        "config": CONFIG,
        "total_steps": 1000,
    }
    with db.session() as session:
        return TrainingRuns(session).create(**{**values, **overrides})


def _metrics(step: int, *, eval: bool = False, loss: float = 1.0) -> dict[str, Any]:
    return {
        "step": step,
        "tokens": step * 4096,
        "loss": loss,
        "mse": loss / 2,
        "l0": 32.5,
        "l1": 120.25,
        "fvu": 0.125,
        "dead_features": 7,
        "tokens_per_s": 250_000.0,
        "learning_rate": 3e-4,
        "time_unix_ms": 1_765_000_000_000 + step,  # past 2**31: needs BIGINT
        "eval": eval,
    }


def _metric_rows(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(TrainingMetricRow)) or 0


# Training runs


def test_training_run_crud(database: Database) -> None:
    created = _create_run(database, 1)
    assert created.id == _run_id(1)
    assert (created.name, created.model, created.config) == ("run 1", MODEL, CONFIG)
    assert created.state is TrainingState.QUEUED
    assert (created.stage, created.step, created.total_steps) == ("", 0, 1000)
    assert (created.latest, created.final_eval, created.error) == (None, None, "")
    assert (created.sae_id, created.checkpoint_step) == ("", 0)
    assert created.created_at.tzinfo is UTC
    assert created.created_at == created.updated_at
    assert not created.finished
    assert database.run(lambda session: TrainingRuns(session).get(_run_id(1))) == created
    assert database.run(lambda session: TrainingRuns(session).get(_run_id(2))) is None

    latest = _metrics(10)
    with database.session() as session:
        updated = TrainingRuns(session).update(
            _run_id(1),
            state=TrainingState.RUNNING,
            stage="training",
            step=10,
            latest=latest,
            checkpoint_step=5,
        )
    assert updated.state is TrainingState.RUNNING
    assert (updated.stage, updated.step, updated.checkpoint_step) == ("training", 10, 5)
    assert updated.latest == latest
    assert updated.updated_at >= created.updated_at
    assert updated.created_at == created.created_at
    # Fields not given keep their value.
    assert (updated.name, updated.config, updated.total_steps) == ("run 1", CONFIG, 1000)

    final_eval = _metrics(1000, eval=True)
    with database.session() as session:
        done = TrainingRuns(session).update(
            _run_id(1),
            state="completed",
            final_eval=final_eval,
            sae_id="ab" * 16,
            total_steps=1200,
            name="renamed",
            config={**CONFIG, "d_sae": 9216},
            error="",
        )
    assert done.state is TrainingState.COMPLETED and done.finished
    assert done.final_eval == final_eval
    assert (done.sae_id, done.total_steps, done.name) == ("ab" * 16, 1200, "renamed")
    assert done.config["d_sae"] == 9216
    assert done.latest == latest

    with database.session() as session:
        cleared = TrainingRuns(session).update(_run_id(1), latest=None, error="boom")
    assert (cleared.latest, cleared.error) == (None, "boom")

    assert database.run(lambda session: TrainingRuns(session).delete(_run_id(1))) is True
    assert database.run(lambda session: TrainingRuns(session).delete(_run_id(1))) is False
    assert database.run(lambda session: TrainingRuns(session).get(_run_id(1))) is None


def test_training_run_update_refusals(database: Database) -> None:
    _create_run(database, 1)
    with pytest.raises(RecordNotFoundError), database.session() as session:
        TrainingRuns(session).update(_run_id(9), step=1)
    with pytest.raises(TypeError, match="created_at"), database.session() as session:
        TrainingRuns(session).update(_run_id(1), created_at=None)
    with pytest.raises(ValueError), database.session() as session:
        TrainingRuns(session).update(_run_id(1), state="exploded")
    assert (
        database.run(lambda session: TrainingRuns(session).get(_run_id(1))).state
        is TrainingState.QUEUED
    )


def test_the_database_refuses_an_unknown_training_state(database: Database) -> None:
    _create_run(database, 1)
    with pytest.raises(IntegrityError), database.session() as session:
        session.get_one(TrainingRunRow, _run_id(1)).state = "exploded"
        session.flush()


def test_training_runs_list_newest_first_and_count(database: Database) -> None:
    assert database.run(lambda session: TrainingRuns(session).list()) == ()
    assert database.run(lambda session: TrainingRuns(session).count()) == 0
    for i in range(5):
        _create_run(database, i)
    listed = database.run(lambda session: TrainingRuns(session).list())
    assert [r.id for r in listed] == [_run_id(i) for i in reversed(range(5))]
    assert database.run(lambda session: TrainingRuns(session).count()) == 5

    pages = [
        database.run(lambda session, o=o: TrainingRuns(session).list(2, o)) for o in (0, 2, 4, 6)
    ]
    assert [[r.id for r in page] for page in pages] == [
        [_run_id(4), _run_id(3)],
        [_run_id(2), _run_id(1)],
        [_run_id(0)],
        [],
    ]
    assert database.run(lambda session: TrainingRuns(session).list(limit=3, offset=1))[
        0
    ].id == _run_id(3)
    with pytest.raises(ValueError):
        database.run(lambda session: TrainingRuns(session).list(limit=0))
    with pytest.raises(ValueError):
        database.run(lambda session: TrainingRuns(session).list(offset=-1))


def test_mark_interrupted_touches_only_unfinished_runs(database: Database) -> None:
    for i, state in enumerate(TrainingState):
        _create_run(database, i)
        with database.session() as session:
            TrainingRuns(session).update(_run_id(i), state=state, stage=f"stage {state}")
    before = {r.id: r for r in database.run(lambda session: TrainingRuns(session).list())}

    assert database.run(lambda session: TrainingRuns(session).mark_interrupted()) == 3
    after = {r.id: r for r in database.run(lambda session: TrainingRuns(session).list())}
    for i, state in enumerate(TrainingState):
        record = after[_run_id(i)]
        if state in (TrainingState.QUEUED, TrainingState.RUNNING, TrainingState.STOPPING):
            assert record.state is TrainingState.INTERRUPTED
            assert record.stage == TRAINING_INTERRUPTED_STAGE
            assert record.updated_at >= before[record.id].updated_at
        else:
            assert record == before[record.id]
    assert database.run(lambda session: TrainingRuns(session).mark_interrupted()) == 0


# Training metrics


def test_metrics_add_and_list(database: Database) -> None:
    _create_run(database, 1)
    _create_run(database, 2)
    logged = [_metrics(20), _metrics(10), _metrics(10, eval=True), _metrics(30)]
    with database.session() as session:
        TrainingMetrics(session).add(_run_id(1), logged)
        TrainingMetrics(session).add(_run_id(2), [_metrics(10)])
        TrainingMetrics(session).add(_run_id(2), [])

    listed = database.run(lambda session: TrainingMetrics(session).list(_run_id(1)))
    # By step, a step's training numbers before its evaluation; exactly the message's keys.
    assert listed == [_metrics(10), _metrics(10, eval=True), _metrics(20), _metrics(30)]
    assert all(tuple(m) == TRAINING_METRIC_FIELDS for m in listed)
    assert isinstance(listed[0]["eval"], bool) and isinstance(listed[0]["step"], int)

    after = database.run(lambda session: TrainingMetrics(session).list(_run_id(1), after_step=10))
    assert [m["step"] for m in after] == [20, 30]
    first = database.run(lambda session: TrainingMetrics(session).list(_run_id(1), -1, 2))
    assert [(m["step"], m["eval"]) for m in first] == [(10, False), (10, True)]
    assert (
        database.run(lambda session: TrainingMetrics(session).list(_run_id(1), after_step=30)) == []
    )
    assert database.run(lambda session: TrainingMetrics(session).list(_run_id(9))) == []
    with pytest.raises(ValueError):
        database.run(lambda session: TrainingMetrics(session).list(_run_id(1), limit=0))


def test_metrics_re_added_replace_the_old_row(database: Database) -> None:
    _create_run(database, 1)
    with database.session() as session:
        TrainingMetrics(session).add(_run_id(1), [_metrics(s, loss=5.0) for s in (1, 2, 3)])
        TrainingMetrics(session).add(_run_id(1), [_metrics(3, eval=True, loss=5.0)])
    # A resumed run logs steps 2 and 3 again, in one batch and across batches.
    with database.session() as session:
        TrainingMetrics(session).add(_run_id(1), [_metrics(2, loss=0.5), _metrics(3, loss=9.0)])
        TrainingMetrics(session).add(_run_id(1), [_metrics(3, loss=0.25), _metrics(4, loss=0.125)])
    listed = database.run(lambda session: TrainingMetrics(session).list(_run_id(1)))
    assert [(m["step"], m["eval"], m["loss"]) for m in listed] == [
        (1, False, 5.0),
        (2, False, 0.5),
        (3, False, 0.25),
        (3, True, 5.0),
        (4, False, 0.125),
    ]
    assert _metric_rows(database) == 5


def test_metrics_coercion_defaults_and_refusals(database: Database) -> None:
    _create_run(database, 1)

    class Scalar(float):  # stands in for a numpy / torch scalar
        pass

    with database.session() as session:
        TrainingMetrics(session).add(
            _run_id(1),
            [
                {"step": 1, "loss": math.nan, "mse": math.inf, "l0": Scalar(2.5)},
                {"step": 2, "eval": 1},
            ],
        )
    first, second = database.run(lambda session: TrainingMetrics(session).list(_run_id(1)))
    assert math.isnan(first["loss"])  # SQLite would turn NaN into NULL; it reads back as NaN
    assert first["mse"] == math.inf
    assert first["l0"] == 2.5 and type(first["l0"]) is float
    assert (first["tokens"], first["dead_features"], first["eval"]) == (0, 0, False)
    assert second["eval"] is True

    with pytest.raises(ValueError, match="aux_loss"), database.session() as session:
        TrainingMetrics(session).add(_run_id(1), [{**_metrics(5), "aux_loss": 1.0}])
    with pytest.raises(IntegrityError), database.session() as session:
        TrainingMetrics(session).add(_run_id(9), [_metrics(1)])  # no such run
    assert _metric_rows(database) == 2


def test_metrics_delete_for_run(database: Database) -> None:
    _create_run(database, 1)
    _create_run(database, 2)
    with database.session() as session:
        TrainingMetrics(session).add(_run_id(1), [_metrics(1), _metrics(1, eval=True), _metrics(2)])
        TrainingMetrics(session).add(_run_id(2), [_metrics(1)])
    assert database.run(lambda session: TrainingMetrics(session).delete_for_run(_run_id(1))) == 3
    assert database.run(lambda session: TrainingMetrics(session).delete_for_run(_run_id(1))) == 0
    assert database.run(lambda session: TrainingMetrics(session).list(_run_id(2))) == [_metrics(1)]


def test_deleting_a_run_deletes_its_metrics(database: Database) -> None:
    _create_run(database, 1)
    _create_run(database, 2)
    with database.session() as session:
        TrainingMetrics(session).add(_run_id(1), [_metrics(1), _metrics(2)])
        TrainingMetrics(session).add(_run_id(2), [_metrics(1)])
    assert database.run(lambda session: TrainingRuns(session).delete(_run_id(1))) is True
    assert database.run(lambda session: TrainingMetrics(session).list(_run_id(1))) == []
    assert _metric_rows(database) == 1

    # The foreign key cascades by itself too, for a delete that bypasses the repository.
    with database.session() as session:
        session.execute(delete(TrainingRunRow).where(TrainingRunRow.id == _run_id(2)))
    assert _metric_rows(database) == 0


# Training templates


def _create_template(db: Database, i: int, name: str, *, favourite: bool = False):
    with db.session() as session:
        return TrainingTemplates(session).create(f"t{i}", name, f"about {name}", CONFIG, favourite)


def test_training_template_crud(database: Database) -> None:
    created = _create_template(database, 1, "topk-16k", favourite=True)
    assert (created.id, created.name, created.description) == ("t1", "topk-16k", "about topk-16k")
    assert created.config == CONFIG and created.favourite is True
    assert created.created_at.tzinfo is UTC and created.created_at == created.updated_at
    assert database.run(lambda session: TrainingTemplates(session).get("t1")) == created
    assert (
        database.run(lambda session: TrainingTemplates(session).get_by_name("topk-16k")) == created
    )
    assert database.run(lambda session: TrainingTemplates(session).get("t9")) is None
    assert database.run(lambda session: TrainingTemplates(session).get_by_name("ghost")) is None

    with database.session() as session:
        default = TrainingTemplates(session).create("t2", "plain", "", {})
    assert default.favourite is False and default.config == {}

    with database.session() as session:
        updated = TrainingTemplates(session).update("t1", description="changed")
    assert updated.description == "changed"
    assert (updated.name, updated.config, updated.favourite) == ("topk-16k", CONFIG, True)
    assert updated.updated_at >= created.updated_at
    with database.session() as session:
        updated = TrainingTemplates(session).update(
            "t1", name="topk-32k", config={"d_sae": 32768}, favourite=False
        )
    assert (updated.name, updated.config, updated.favourite) == (
        "topk-32k",
        {"d_sae": 32768},
        False,
    )
    assert updated.description == "changed"
    assert database.run(lambda session: TrainingTemplates(session).get_by_name("topk-16k")) is None
    # Renaming to its own name is no conflict.
    with database.session() as session:
        assert TrainingTemplates(session).update("t1", name="topk-32k").name == "topk-32k"

    assert database.run(lambda session: TrainingTemplates(session).delete("t1")) is True
    assert database.run(lambda session: TrainingTemplates(session).delete("t1")) is False
    assert database.run(lambda session: TrainingTemplates(session).get("t1")) is None


def test_training_templates_list_favourites_first_then_by_name(database: Database) -> None:
    for i, (name, favourite) in enumerate(
        [("delta", False), ("charlie", True), ("alpha", False), ("bravo", True)]
    ):
        _create_template(database, i, name, favourite=favourite)
    listed = database.run(lambda session: TrainingTemplates(session).list())
    assert [t.name for t in listed] == ["bravo", "charlie", "alpha", "delta"]


def test_training_template_names_are_unique(database: Database) -> None:
    _create_template(database, 1, "a")
    _create_template(database, 2, "b")
    with pytest.raises(RecordExistsError), database.session() as session:
        TrainingTemplates(session).create("t3", "a", "other", {}, True)
    assert database.run(lambda session: TrainingTemplates(session).get("t3")) is None
    assert database.run(lambda session: TrainingTemplates(session).get_by_name("a")).id == "t1"

    with pytest.raises(RecordExistsError), database.session() as session:
        TrainingTemplates(session).update("t2", name="a")
    assert database.run(lambda session: TrainingTemplates(session).get("t2")).name == "b"

    # The refused rename leaves the transaction usable (PostgreSQL aborts it otherwise).
    with database.session() as session:
        with pytest.raises(RecordExistsError):
            TrainingTemplates(session).update("t2", name="a", description="lost")
        TrainingTemplates(session).update("t2", description="kept")
    kept = database.run(lambda session: TrainingTemplates(session).get("t2"))
    assert (kept.name, kept.description) == ("b", "kept")

    with pytest.raises(RecordNotFoundError), database.session() as session:
        TrainingTemplates(session).update("t9", description="x")
    with pytest.raises(RecordNotFoundError), database.session() as session:
        TrainingTemplates(session).update("t9", name="fresh")


# Corpora


def test_corpus_crud_and_newest_first(database: Database) -> None:
    with database.session() as session:
        created = Corpora(session).create(
            "c1", "tiny stories", 5_000_000_000, 2_100_000, "corpora/c1"
        )
    assert (created.id, created.name, created.local_path) == ("c1", "tiny stories", "corpora/c1")
    assert (created.size_bytes, created.documents) == (5_000_000_000, 2_100_000)
    assert created.created_at.tzinfo is UTC
    assert database.run(lambda session: Corpora(session).get("c1")) == created
    assert database.run(lambda session: Corpora(session).get("c9")) is None

    for i in (2, 3):
        with database.session() as session:
            Corpora(session).create(f"c{i}", f"corpus {i}", i, i, f"corpora/c{i}")
    assert [c.id for c in database.run(lambda session: Corpora(session).list())] == [
        "c3",
        "c2",
        "c1",
    ]

    assert database.run(lambda session: Corpora(session).delete("c2")) is True
    assert database.run(lambda session: Corpora(session).delete("c2")) is False
    assert [c.id for c in database.run(lambda session: Corpora(session).list())] == ["c3", "c1"]


def test_rollback_leaves_no_training_rows(database: Database) -> None:
    with pytest.raises(RuntimeError, match="boom"), database.session() as session:
        TrainingRuns(session).create(_run_id(1), "r", MODEL, CONFIG, 10)
        TrainingMetrics(session).add(_run_id(1), [_metrics(1)])
        TrainingTemplates(session).create("t1", "a", "", {})
        Corpora(session).create("c1", "c", 1, 1, "corpora/c1")
        raise RuntimeError("boom")
    with database.session() as session:
        assert TrainingRuns(session).count() == 0
        assert TrainingTemplates(session).list() == ()
        assert Corpora(session).list() == ()
    assert _metric_rows(database) == 0


# Migration 0004


def test_0004_downgrades_and_upgrades_again(database: Database) -> None:
    _create_run(database, 1)

    def to(revision: str) -> None:
        with database.engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            if revision == "0003":
                command.downgrade(config, revision)
            else:
                command.upgrade(config, revision)

    to("0003")
    assert database.current_revision() == "0003"
    assert not TRAINING_TABLES & set(inspect(database.engine).get_table_names())
    to("0004")
    assert database.current_revision() == "0004"
    assert set(inspect(database.engine).get_table_names()) >= TRAINING_TABLES
    assert database.run(lambda session: TrainingRuns(session).count()) == 0
