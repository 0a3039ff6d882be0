"""The SQL schema as SQLAlchemy declarative tables.

Changing anything here needs a migration in `migrations/versions/`; the test suite
fails when the migrated schema and these tables disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from inference_service.models.types import CachedModelState, ModelFormat
from inference_service.operations.types import OperationState
from inference_service.sae.types import SaeState
from inference_service.training.types import TrainingState


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Explicit constraint names so Alembic can alter them later (SQLite batch mode needs names).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _one_of(
    column: str,
    values: type[ModelFormat | CachedModelState | OperationState | SaeState | TrainingState],
) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class TableBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime()}


class ModelRecordRow(TableBase):
    """A language model on disk (or on its way there)."""

    __tablename__ = "model_records"
    __table_args__ = (
        CheckConstraint(_one_of("format", ModelFormat), name="format"),
        CheckConstraint(_one_of("state", CachedModelState), name="state"),
    )

    id: Mapped[str] = mapped_column(String(512), primary_key=True)
    repo_id: Mapped[str] = mapped_column(String(256))
    revision: Mapped[str] = mapped_column(String(256))
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(16))
    parameter_count: Mapped[int | None] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    local_dir: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ModelFileRow(TableBase):
    __tablename__ = "model_files"

    record_id: Mapped[str] = mapped_column(
        String(512), ForeignKey("model_records.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    verified: Mapped[bool]


class OperationRow(TableBase):
    """Slow work (downloads, training) a client can re-watch after a restart."""

    __tablename__ = "operations"
    __table_args__ = (
        CheckConstraint(_one_of("state", OperationState), name="state"),
        Index("ix_operations_created_at_id", "created_at", "id"),
        Index("ix_operations_state", "state"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str] = mapped_column(String(64))
    bytes_done: Mapped[int] = mapped_column(BigInteger)
    bytes_total: Mapped[int | None] = mapped_column(BigInteger)
    error_message: Mapped[str | None] = mapped_column(Text)
    target: Mapped[str] = mapped_column(String(1024))
    params_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class SaeRecordRow(TableBase):
    """A Sparse Autoencoder on disk (or on its way there)."""

    __tablename__ = "sae_records"
    __table_args__ = (CheckConstraint(_one_of("state", SaeState), name="state"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(512))
    source_key: Mapped[str] = mapped_column(String(1024), unique=True)
    source_json: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    local_dir: Mapped[str] = mapped_column(String(1024))
    spec_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ProfileRow(TableBase):
    """A named steering profile, bound to the model and SAE it was made on."""

    __tablename__ = "profiles"
    __table_args__ = (
        # At most one profile is the active one; the partial index enforces it.
        Index(
            "uq_profiles_active",
            "active",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text)
    model_name: Mapped[str] = mapped_column(String(256))
    sae_id: Mapped[str] = mapped_column(String(64))
    sae_name: Mapped[str] = mapped_column(String(512))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    hook_name: Mapped[str] = mapped_column(String(256))
    d_sae: Mapped[int] = mapped_column(Integer)
    features_json: Mapped[str] = mapped_column(Text)
    active: Mapped[bool]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class TrainingRunRow(TableBase):
    """An SAE training run: its configuration, where it stands and what it produced."""

    __tablename__ = "training_runs"
    __table_args__ = (
        CheckConstraint(_one_of("state", TrainingState), name="state"),
        Index("ix_training_runs_created_at_id", "created_at", "id"),
        Index("ix_training_runs_state", "state"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    model: Mapped[str] = mapped_column(String(256))
    config_json: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str] = mapped_column(String(256))
    # BigInteger: steps and counts are uint64 in the API.
    step: Mapped[int] = mapped_column(BigInteger)
    total_steps: Mapped[int] = mapped_column(BigInteger)
    latest_json: Mapped[str | None] = mapped_column(Text)
    final_eval_json: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    sae_id: Mapped[str] = mapped_column(String(64))
    checkpoint_step: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class TrainingMetricRow(TableBase):
    """One logged step of a run: its training numbers, or (`eval`) an evaluation's."""

    __tablename__ = "training_metrics"

    run_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("training_runs.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    eval: Mapped[bool] = mapped_column(primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger)
    # Nullable because NULL stands for NaN: SQLite stores a NaN as NULL, and a diverging
    # run logs NaN losses that the charts must still show.
    loss: Mapped[float | None] = mapped_column(Double)
    mse: Mapped[float | None] = mapped_column(Double)
    l0: Mapped[float | None] = mapped_column(Double)
    l1: Mapped[float | None] = mapped_column(Double)
    fvu: Mapped[float | None] = mapped_column(Double)
    dead_features: Mapped[int] = mapped_column(Integer)
    tokens_per_s: Mapped[float | None] = mapped_column(Double)
    learning_rate: Mapped[float | None] = mapped_column(Double)
    time_unix_ms: Mapped[int] = mapped_column(BigInteger)


class TrainingTemplateRow(TableBase):
    """A named training configuration to start runs from."""

    __tablename__ = "training_templates"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    description: Mapped[str] = mapped_column(Text)
    config_json: Mapped[str] = mapped_column(Text)
    favourite: Mapped[bool]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class CorpusRow(TableBase):
    """An uploaded text corpus under the data directory."""

    __tablename__ = "corpora"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    documents: Mapped[int] = mapped_column(BigInteger)
    local_path: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime]


class FeatureLabelRow(TableBase):
    """A label and notes for one feature of an SAE, keyed by the SAE's weights sha256."""

    __tablename__ = "feature_labels"

    sae_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    feature_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(Text)
    notes: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime]


class SaeAttachmentRow(TableBase):
    """One attachment of an SAE to the served model, from attach to detach: the history,
    and (the newest row with no `detached_at`) what start-up attaches again."""

    __tablename__ = "sae_attachments"
    __table_args__ = (Index("ix_sae_attachments_attached_at_id", "attached_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # No foreign key: the history outlives a deleted SAE.
    sae_id: Mapped[str] = mapped_column(String(64))
    hook_name: Mapped[str] = mapped_column(String(256))
    model_id: Mapped[str] = mapped_column(String(512))
    dtype: Mapped[str] = mapped_column(String(16))
    sae_bytes: Mapped[int] = mapped_column(BigInteger)
    # The live (global) steering on this attachment, rewritten on every change.
    steering_json: Mapped[str | None] = mapped_column(Text)
    attached_at: Mapped[datetime]
    detached_at: Mapped[datetime | None]
    # What ended it: "detached", "replaced", "model_changed", "restored", "restore_failed".
    ended_by: Mapped[str | None] = mapped_column(String(32))
