"""The initial schema: experiments, pairs, hourly aggregates, memory samples, verdicts.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("last_pair_at", TS, nullable=True),
        sa.Column("prod_version", sa.String(200), nullable=True),
        sa.Column("cand_version", sa.String(200), nullable=True),
        sa.Column("task", sa.String(32), nullable=True),
        sa.Column("n_pairs", sa.BigInteger(), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_experiments"),
        sa.UniqueConstraint("name", name="uq_experiments_name"),
    )
    op.create_table(
        "pairs",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("request_sha256", sa.String(64), nullable=False),
        sa.Column("prod_outcome", sa.String(16), nullable=False),
        sa.Column("cand_outcome", sa.String(16), nullable=False),
        sa.Column("twin_outcome", sa.String(16), nullable=True),
        sa.Column("prod_status", sa.SmallInteger(), nullable=True),
        sa.Column("cand_status", sa.SmallInteger(), nullable=True),
        sa.Column("prod_latency_ms", sa.Float(), nullable=True),
        sa.Column("cand_latency_ms", sa.Float(), nullable=True),
        sa.Column("prod_version", sa.String(200), nullable=True),
        sa.Column("cand_version", sa.String(200), nullable=True),
        sa.Column("prod_class", sa.Integer(), nullable=True),
        sa.Column("cand_class", sa.Integer(), nullable=True),
        sa.Column("top1_agree", sa.Boolean(), nullable=True),
        sa.Column("js", sa.Float(), nullable=True),
        sa.Column("abs_diff", sa.Float(), nullable=True),
        sa.Column("cosine", sa.Float(), nullable=True),
        sa.Column("rbo_loss", sa.Float(), nullable=True),
        sa.Column("prod_invalid", sa.Boolean(), nullable=False),
        sa.Column("cand_invalid", sa.Boolean(), nullable=False),
        sa.Column("divergence", sa.Float(), nullable=True),
        sa.Column("sampled", sa.Boolean(), nullable=False),
        sa.Column("request_body", JSON, nullable=True),
        sa.Column("prod_body", JSON, nullable=True),
        sa.Column("cand_body", JSON, nullable=True),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name="fk_pairs_experiment_id_experiments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "request_id", name="pk_pairs"),
    )
    op.create_index("ix_pairs_experiment_ts", "pairs", ["experiment_id", "ts"])
    op.create_table(
        "hourly_aggregates",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("hour", TS, nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name="fk_hourly_aggregates_experiment_id_experiments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "hour", name="pk_hourly_aggregates"),
    )
    op.create_table(
        "memory_samples",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("value_bytes", sa.Float(), nullable=False),
        sa.Column("limit_bytes", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name="fk_memory_samples_experiment_id_experiments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_memory_samples"),
    )
    op.create_index("ix_memory_samples_experiment_ts", "memory_samples", ["experiment_id", "ts"])
    op.create_table(
        "verdicts",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name="fk_verdicts_experiment_id_experiments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_verdicts"),
    )
    op.create_index("ix_verdicts_experiment_at", "verdicts", ["experiment_id", "at"])
    op.create_table(
        "verdict_state",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("state", JSON, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name="fk_verdict_state_experiment_id_experiments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", name="pk_verdict_state"),
    )


def downgrade() -> None:
    op.drop_table("verdict_state")
    op.drop_index("ix_verdicts_experiment_at", table_name="verdicts")
    op.drop_table("verdicts")
    op.drop_index("ix_memory_samples_experiment_ts", table_name="memory_samples")
    op.drop_table("memory_samples")
    op.drop_table("hourly_aggregates")
    op.drop_index("ix_pairs_experiment_ts", table_name="pairs")
    op.drop_table("pairs")
    op.drop_table("experiments")
