"""sae attachments: the attach/detach history, and what start-up attaches again

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sae_attachments",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("sae_id", sa.String(64), nullable=False),
        sa.Column("hook_name", sa.String(256), nullable=False),
        sa.Column("model_id", sa.String(512), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("sae_bytes", sa.BigInteger(), nullable=False),
        sa.Column("steering_json", sa.Text(), nullable=True),
        sa.Column("attached_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detached_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_by", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sae_attachments")),
    )
    op.create_index("ix_sae_attachments_attached_at_id", "sae_attachments", ["attached_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_sae_attachments_attached_at_id", table_name="sae_attachments")
    op.drop_table("sae_attachments")
