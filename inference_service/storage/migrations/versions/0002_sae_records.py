"""sae_records: cached Sparse Autoencoders

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sae_records",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("source_key", sa.String(1024), nullable=False),
        sa.Column("source_json", sa.Text(), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=True),
        sa.Column("local_dir", sa.String(1024), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('downloading', 'ready', 'corrupted', 'missing')",
            name=op.f("ck_sae_records_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sae_records")),
        sa.UniqueConstraint("source_key", name=op.f("uq_sae_records_source_key")),
    )


def downgrade() -> None:
    op.drop_table("sae_records")
