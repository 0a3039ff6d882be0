"""The database: engine, transactions, migrations, and what every repository shares.

SQLite under the data directory is the embedded default; a `postgresql://` URL
(`MILLM_DATABASE_URL`) selects PostgreSQL. The engine is synchronous: the service
calls it through `asyncio.to_thread`, one short transaction per call.

Each domain owns its repository (`profiles/repository.py`, `sae/repository.py`, ...):
a class bound to one session that maps rows straight to the domain's types, so
repositories used in one `session()` commit or roll back together::

    db.run(lambda session: TrainingRuns(session).get(run_id))

Creating a migration after changing `tables.py` (no alembic.ini, no make)::

    .venv/bin/python -m inference_service.storage revision -m "add profiles"

autogenerates `migrations/versions/<rev>_add_profiles.py` by diffing `tables.py`
against a scratch SQLite database upgraded to head (`--empty` for a data migration).
Review the script and `ruff format` it before committing; on SQLite, column changes
run in Alembic's batch mode (table copy).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CursorResult, Engine, Executable, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_FILENAME = "millm.db"
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Any constant: serializes `migrate()` across replicas sharing one PostgreSQL.
_PG_MIGRATION_LOCK = 0x6D696C6C6D


def resolve_url(database_url: str, data_dir: Path) -> str:
    """The settings' `database_url`, or SQLite at `<data_dir>/millm.db` when empty."""
    if database_url:
        return database_url
    return URL.create(
        "sqlite+pysqlite", database=str(data_dir / SQLITE_FILENAME)
    ).render_as_string()


class Database:
    """One engine and its session factory; share one instance per process."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        parsed = make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
        self.url = parsed
        self.dialect = parsed.get_backend_name()
        self.engine = self._create_engine(parsed, echo)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @staticmethod
    def _create_engine(url: URL, echo: bool) -> Engine:
        if url.get_backend_name() != "sqlite":
            return create_engine(url, echo=echo, pool_pre_ping=True)
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _configure_sqlite)
        event.listen(engine, "begin", _begin_immediate)
        return engine

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions() as session, session.begin():
            yield session

    def run(self, work: Callable[[Session], T]) -> T:
        """`work` in one transaction; the shape `asyncio.to_thread` wants."""
        with self.session() as session:
            return work(session)

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision (a no-op when already there)."""
        with self.engine.begin() as connection:
            if self.dialect == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK}
                )
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        log.info("database schema at %s (%s)", self.current_revision(), self.dialect)

    def current_revision(self) -> str | None:
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def close(self) -> None:
        self.engine.dispose()


class RecordNotFoundError(LookupError):
    """The row a write addressed does not exist."""


class RecordExistsError(LookupError):
    """A create found a row with the same key."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def rowcount(session: Session, statement: Executable) -> int:
    """Rows an UPDATE or DELETE matched."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def upsert_insert(session: Session, table: type[DeclarativeBase] | Table) -> Any:
    """An INSERT that takes ON CONFLICT clauses on the session's backend (both have them)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration built in code: no alembic.ini at runtime."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _configure_sqlite(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own handling defers
    # it to the first write, so a read-then-write transaction can fail with SQLITE_BUSY
    # instead of waiting for the lock).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL + synchronous=NORMAL: a commit is appended to the WAL file before COMMIT returns,
    # so it survives the process being killed (-9 included); only an OS crash or power loss
    # can lose the last commits, which FULL would also fsync against at a cost per commit.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _begin_immediate(connection: Any) -> None:
    # Take the write lock up front so concurrent writers queue on busy_timeout.
    connection.exec_driver_sql("BEGIN IMMEDIATE")
