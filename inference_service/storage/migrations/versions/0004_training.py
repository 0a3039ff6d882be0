"""training: SAE training runs, their metrics, templates and uploaded corpora

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(256), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("total_steps", sa.BigInteger(), nullable=False),
        sa.Column("latest_json", sa.Text(), nullable=True),
        sa.Column("final_eval_json", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("sae_id", sa.String(64), nullable=False),
        sa.Column("checkpoint_step", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'stopping', 'stopped', 'completed', 'failed', "
            "'interrupted')",
            name=op.f("ck_training_runs_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    op.create_index("ix_training_runs_created_at_id", "training_runs", ["created_at", "id"])
    op.create_index("ix_training_runs_state", "training_runs", ["state"])
    op.create_table(
        "training_metrics",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("eval", sa.Boolean(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        # Nullable: NULL stands for NaN (SQLite stores a NaN as NULL).
        sa.Column("loss", sa.Double(), nullable=True),
        sa.Column("mse", sa.Double(), nullable=True),
        sa.Column("l0", sa.Double(), nullable=True),
        sa.Column("l1", sa.Double(), nullable=True),
        sa.Column("fvu", sa.Double(), nullable=True),
        sa.Column("dead_features", sa.Integer(), nullable=False),
        sa.Column("tokens_per_s", sa.Double(), nullable=True),
        sa.Column("learning_rate", sa.Double(), nullable=True),
        sa.Column("time_unix_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["training_runs.id"],
            name=op.f("fk_training_metrics_run_id_training_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "step", "eval", name=op.f("pk_training_metrics")),
    )
    op.create_table(
        "training_templates",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("favourite", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_templates")),
        sa.UniqueConstraint("name", name=op.f("uq_training_templates_name")),
    )
    op.create_table(
        "corpora",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("documents", sa.BigInteger(), nullable=False),
        sa.Column("local_path", sa.String(1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_corpora")),
    )


def downgrade() -> None:
    op.drop_table("corpora")
    op.drop_table("training_templates")
    op.drop_table("training_metrics")
    op.drop_index("ix_training_runs_state", table_name="training_runs")
    op.drop_index("ix_training_runs_created_at_id", table_name="training_runs")
    op.drop_table("training_runs")
