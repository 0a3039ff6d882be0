"""profiles: named steering profiles, at most one active

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "profiles",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("sae_id", sa.String(64), nullable=False),
        sa.Column("sae_name", sa.String(512), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("hook_name", sa.String(256), nullable=False),
        sa.Column("d_sae", sa.Integer(), nullable=False),
        sa.Column("features_json", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_profiles")),
    )
    # At most one active profile: a unique index over the rows where `active` holds.
    op.create_index(
        "uq_profiles_active",
        "profiles",
        ["active"],
        unique=True,
        sqlite_where=sa.text("active"),
        postgresql_where=sa.text("active"),
    )


def downgrade() -> None:
    op.drop_index("uq_profiles_active", table_name="profiles")
    op.drop_table("profiles")
