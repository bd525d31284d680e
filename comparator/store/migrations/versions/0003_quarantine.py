"""The quarantine: pairs refused one by one, each with its reason, instead of a refused batch.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "quarantine",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("experiment", sa.String(128), nullable=True),
        sa.Column("request_id", sa.String(200), nullable=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("item", sa.Text(), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
    )
    op.create_index(
        "ix_quarantine_experiment_received_at", "quarantine", ["experiment", "received_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_quarantine_experiment_received_at", table_name="quarantine")
    op.drop_table("quarantine")
