"""Which comparator replica stored each look and each memory sample (a fleet's audit trail).

With several replicas on one PostgreSQL database, only the elected leader (comparator.leader)
samples memory and takes the periodic looks; the ``replica`` column names who did, so the stored
rows themselves show that one replica at a time held the role. Nullable: rows stored before this
revision, and those the CLI stores, name none.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(sa.Column("replica", sa.String(128), nullable=True))
    with op.batch_alter_table("memory_samples") as batch:
        batch.add_column(sa.Column("replica", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("memory_samples") as batch:
        batch.drop_column("replica")
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_column("replica")
