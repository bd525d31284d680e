"""Quarantine retention keeps its counts: a tally of purged quarantine rows per experiment and
reason, so the summary's "refused into the quarantine (ever)" survives retention.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
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
        "quarantine_tally",
        sa.Column("experiment", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("experiment", "reason", name="pk_quarantine_tally"),
    )


def downgrade() -> None:
    op.drop_table("quarantine_tally")
