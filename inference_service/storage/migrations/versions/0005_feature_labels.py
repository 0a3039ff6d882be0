"""feature labels: a label and notes per feature of an SAE, keyed by its weights sha256

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feature_labels",
        sa.Column("sae_sha256", sa.String(64), nullable=False),
        sa.Column("feature_index", sa.Integer(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sae_sha256", "feature_index", name=op.f("pk_feature_labels")),
    )


def downgrade() -> None:
    op.drop_table("feature_labels")
