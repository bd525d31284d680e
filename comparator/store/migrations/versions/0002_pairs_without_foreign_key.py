"""Pairs drop their foreign key to experiments: ingest checks it once per batch, not per row.

Every writer of ``pairs`` (ingest) locks, or first creates, the experiment row in the same
transaction as the bulk load, so the key can only ever point at a stored experiment. Checked by
the database, it cost a lookup per pair, a large share of a bulk load's time.
Nothing in shadowtee deletes an experiment; one deleted by hand leaves its pairs behind, to be
deleted with ``DELETE FROM pairs WHERE experiment_id = …``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

FK = "fk_pairs_experiment_id_experiments"


def upgrade() -> None:
    with op.batch_alter_table("pairs") as batch:  # SQLite: the table is copied without the key
        batch.drop_constraint(FK, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("pairs") as batch:
        batch.create_foreign_key(FK, "experiments", ["experiment_id"], ["id"], ondelete="CASCADE")
