"""PostgreSQL: pairs partitioned by UTC day (see comparator.store.partitions); SQLite is left as it is.

The table is rebuilt: ``pairs`` becomes ``PARTITION BY RANGE (ts)`` with the primary key
(experiment_id, request_id, ts) — a partitioned table's keys must hold its partition key — a
default partition, one partition per day that holds pairs and today and the two days after; then
every row is copied over (one INSERT … SELECT: on a large table the upgrade takes the time of
writing the table once more, during which ingest waits). Downgrade copies the rows back into a
plain table keyed (experiment_id, request_id).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DAYS_AHEAD = 2


def _bound(day: date) -> str:
    return f"'{datetime.combine(day, time(), tzinfo=UTC).isoformat()}'"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE pairs RENAME TO pairs_0003")
    op.execute("ALTER TABLE pairs_0003 RENAME CONSTRAINT pk_pairs TO pk_pairs_0003")
    op.execute("ALTER INDEX ix_pairs_experiment_ts RENAME TO ix_pairs_0003_experiment_ts")
    op.execute("CREATE TABLE pairs (LIKE pairs_0003 INCLUDING DEFAULTS) PARTITION BY RANGE (ts)")
    op.execute(
        "ALTER TABLE pairs ADD CONSTRAINT pk_pairs PRIMARY KEY (experiment_id, request_id, ts)"
    )
    op.execute("CREATE INDEX ix_pairs_experiment_ts ON pairs (experiment_id, ts)")
    op.execute("CREATE TABLE pairs_default PARTITION OF pairs DEFAULT")
    stored = bind.execute(
        sa.text("SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM pairs_0003")
    ).scalars()
    today = datetime.now(UTC).date()
    days = set(stored) | {today + timedelta(days=k) for k in range(DAYS_AHEAD + 1)}
    for day in sorted(days):
        op.execute(
            f"CREATE TABLE pairs_p{day:%Y%m%d} PARTITION OF pairs "
            f"FOR VALUES FROM ({_bound(day)}) TO ({_bound(day + timedelta(days=1))})"
        )
    op.execute("INSERT INTO pairs SELECT * FROM pairs_0003")
    op.execute("DROP TABLE pairs_0003")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE pairs RENAME TO pairs_0004")
    op.execute("ALTER TABLE pairs_0004 RENAME CONSTRAINT pk_pairs TO pk_pairs_0004")
    op.execute("ALTER INDEX ix_pairs_experiment_ts RENAME TO ix_pairs_0004_experiment_ts")
    op.execute("CREATE TABLE pairs (LIKE pairs_0004 INCLUDING DEFAULTS)")
    op.execute("ALTER TABLE pairs ADD CONSTRAINT pk_pairs PRIMARY KEY (experiment_id, request_id)")
    op.execute("CREATE INDEX ix_pairs_experiment_ts ON pairs (experiment_id, ts)")
    # A pair id stored under two times (only a client other than the proxy could send that)
    # keeps its earliest.
    op.execute("INSERT INTO pairs SELECT * FROM pairs_0004 ORDER BY ts ON CONFLICT DO NOTHING")
    op.execute("DROP TABLE pairs_0004")  # and its partitions
    # Days a retention pass detached and did not get to drop: their kept sample stays.
    leftovers = bind.execute(
        sa.text(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND NOT relispartition "
            "AND relnamespace = current_schema()::regnamespace AND relname ~ '^pairs_p[0-9]{8}$'"
        )
    ).scalars()
    for name in list(leftovers):
        op.execute(f"INSERT INTO pairs SELECT * FROM {name} WHERE sampled ON CONFLICT DO NOTHING")
        op.execute(f"DROP TABLE {name}")
