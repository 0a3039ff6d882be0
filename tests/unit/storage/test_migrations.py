from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from inference_service.models.repository import ModelRecords
from inference_service.models.types import ModelFormat
from inference_service.storage import Database, resolve_url
from inference_service.storage.database import MIGRATIONS_DIR
from inference_service.storage.tables import TableBase

HEAD = "0006"


def test_migrate_creates_the_schema(database_url: str) -> None:
    db = Database(database_url)
    assert db.current_revision() is None
    db.migrate()
    assert db.current_revision() == HEAD
    tables = set(inspect(db.engine).get_table_names())
    expected = {
        "model_records",
        "model_files",
        "operations",
        "sae_records",
        "profiles",
        "training_runs",
        "training_metrics",
        "training_templates",
        "corpora",
        "feature_labels",
        "sae_attachments",
        "alembic_version",
    }
    assert expected <= tables
    db.close()


def test_migrated_schema_matches_tables(database: Database) -> None:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, TableBase.metadata) == []


def test_second_migrate_is_a_no_op(database: Database, tmp_path: Path) -> None:
    with database.session() as session:
        ModelRecords(session, tmp_path).upsert(
            repo_id="a/b", revision="main", format=ModelFormat.GGUF, local_dir=tmp_path / "models/a"
        )
    database.migrate()
    assert database.current_revision() == HEAD
    with database.session() as session:
        assert len(ModelRecords(session, tmp_path).list()) == 1


def test_one_version_script_per_head() -> None:
    scripts = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*.py"))
    assert scripts[-1].startswith(HEAD)


def test_sqlite_pragmas(tmp_path: Path) -> None:
    database = Database(resolve_url("", tmp_path))
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 10_000
    database.close()
