"""SQLAlchemy typed models: the schema Alembic migrates and the store reads and writes.

Tables, one concept each::

    experiments        one row per experiment name: versions, start, configuration, pair count
    ├── pairs          one row per request_id (unique per experiment): outcomes, latencies and the
    │                  per-pair metrics for drill-down; bodies only when configured
    ├── hourly_aggregates  (experiment, UTC hour) -> Aggregate.to_json(): what every look reads
    ├── memory_samples RSS / GPU bytes per side, scraped from the model servers
    ├── verdicts       the history of verdicts (payload as JSON)
    └── verdict_state  the latest decision and the confidence-sequence state the verdict carries on
    quarantine         pairs the comparator refused one by one, with the reason (never a whole batch)

Times are stored in UTC. On SQLite, which has no time-zone type, :class:`UTCDateTime` stores naive
UTC and hands back aware datetimes, so both databases return the same values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "ExperimentRow",
    "HourlyAggregateRow",
    "JsonType",
    "MemorySampleRow",
    "PairRow",
    "QuarantineRow",
    "UTCDateTime",
    "VerdictRow",
    "VerdictStateRow",
]


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always UTC and always time-zone aware when read back."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite keeps the text of the value: store naive UTC so ordering is textual ordering.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL (compact, indexable), JSON text elsewhere.
JsonType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# 64-bit ids on PostgreSQL; SQLite only auto-increments a column declared INTEGER.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ExperimentRow(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_pair_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    prod_version: Mapped[str | None] = mapped_column(String(200), nullable=True)
    cand_version: Mapped[str | None] = mapped_column(String(200), nullable=True)
    task: Mapped[str | None] = mapped_column(String(32), nullable=True)
    n_pairs: Mapped[int] = mapped_column(BigInteger, default=0)
    config: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PairRow(Base):
    """One stored pair. The primary key (experiment_id, request_id) is what makes ingest idempotent.

    On PostgreSQL (migration 0004) the table is partitioned by UTC day of ``ts``
    (comparator.store.partitions) and its key is (experiment_id, request_id, ts), since a partitioned
    table's keys must hold the partition key: a pair id always comes with the same ``ts``.

    ``experiment_id`` has no foreign key (migration 0002): ingest locks or creates the experiment
    in the same transaction as it loads the pairs, which a per-row check would only repeat.
    """

    __tablename__ = "pairs"

    experiment_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    route: Mapped[str] = mapped_column(Text)
    request_sha256: Mapped[str] = mapped_column(String(64))
    prod_outcome: Mapped[str] = mapped_column(String(16))
    cand_outcome: Mapped[str] = mapped_column(String(16))
    twin_outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    prod_status: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    cand_status: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    prod_latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    cand_latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    prod_version: Mapped[str | None] = mapped_column(String(200), nullable=True)
    cand_version: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # per-pair metrics (NULL where not applicable), for drill-down and re-computation
    prod_class: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cand_class: Mapped[int | None] = mapped_column(Integer, nullable=True)
    top1_agree: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    js: Mapped[float | None] = mapped_column(Float, nullable=True)
    abs_diff: Mapped[float | None] = mapped_column(Float, nullable=True)
    cosine: Mapped[float | None] = mapped_column(Float, nullable=True)
    rbo_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    prod_invalid: Mapped[bool] = mapped_column(Boolean, default=False)
    cand_invalid: Mapped[bool] = mapped_column(Boolean, default=False)
    divergence: Mapped[float | None] = mapped_column(Float, nullable=True)
    # kept past retention for drill-down when the request id hashes into the sample
    sampled: Mapped[bool] = mapped_column(Boolean, default=False)
    request_body: Mapped[Any | None] = mapped_column(JsonType, nullable=True)
    prod_body: Mapped[Any | None] = mapped_column(JsonType, nullable=True)
    cand_body: Mapped[Any | None] = mapped_column(JsonType, nullable=True)

    __table_args__ = (Index("ix_pairs_experiment_ts", "experiment_id", "ts"),)


class HourlyAggregateRow(Base):
    __tablename__ = "hourly_aggregates"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JsonType)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MemorySampleRow(Base):
    __tablename__ = "memory_samples"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    side: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(8))
    value_bytes: Mapped[float] = mapped_column(Float)
    limit_bytes: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The comparator replica that scraped it (migration 0005); None before, or from the CLI.
    replica: Mapped[str | None] = mapped_column(String(128), nullable=True)

    __table_args__ = (Index("ix_memory_samples_experiment_ts", "experiment_id", "ts"),)


class VerdictRow(Base):
    __tablename__ = "verdicts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    decision: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The comparator replica that took the look (migration 0005); None before, or from the CLI.
    replica: Mapped[str | None] = mapped_column(String(128), nullable=True)

    __table_args__ = (Index("ix_verdicts_experiment_at", "experiment_id", "at"),)


class VerdictStateRow(Base):
    __tablename__ = "verdict_state"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    decision: Mapped[str] = mapped_column(String(32))
    state: Mapped[dict[str, Any]] = mapped_column(JsonType)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class QuarantineRow(Base):
    """One pair the comparator refused, kept with its reason for inspection (migration 0003).

    ``experiment`` and ``request_id`` are the pair's own names as far as they could be read (text
    made safe for every store, cut to the column), ``item`` the pair as JSON with every non-ASCII
    character escaped (so a NUL is the six characters ``\\u0000``), cut at 16 KiB. No key to
    ``experiments``: a refused pair may name an experiment that was never stored.
    """

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    experiment: Mapped[str | None] = mapped_column(String(128), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    item: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_quarantine_experiment_received_at", "experiment", "received_at"),)


class QuarantineTallyRow(Base):
    """How many quarantine rows retention purged, per experiment ("" when the pair named none)
    and reason (migration 0006): counts of refused pairs outlive the rows."""

    __tablename__ = "quarantine_tally"

    experiment: Mapped[str] = mapped_column(String(128), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
