"""The SQL store of pairs, hourly aggregates, memory samples and verdicts (SQLite or PostgreSQL).

One code base serves both databases: ``sqlite:///path`` runs on aiosqlite (WAL, busy timeout, one
writer at a time) and ``postgresql://…`` on asyncpg (row locks). Every look at an experiment reads
``hourly_aggregates`` — O(hours) rows of :class:`~comparator.measure.aggregates.Aggregate` — never the pairs.

Ingest is one transaction per batch, written by :class:`comparator.store.writer.Ingest` (see there
for why a retried or overlapping batch never counts twice); everything else is here. On PostgreSQL
the pairs are partitioned by day (:mod:`comparator.store.partitions`): a batch creates the partition of
its day first if it has none, and retention drops whole days.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
from sqlalchemy import Select, Table, column, delete, func, select, table, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from comparator.exceptions import StoreError, UnknownExperiment
from comparator.measure.aggregates import Aggregate
from comparator.measure.normalize import NormalizeConfig
from comparator.store.database import async_url, make_engine, migration_state, upgrade_database
from comparator.store.dialect import EXP, HOURS, PAIRS, QUARANTINE, insert_for
from comparator.store.models import MemorySampleRow, QuarantineTallyRow, VerdictRow, VerdictStateRow
from comparator.store.partitions import DEFAULT, Partitions, epoch_days
from comparator.store.writer import Ingest, IngestResult
from comparator.wire import Pair

if TYPE_CHECKING:
    from comparator.ingest import Refused

__all__ = [
    "ExperimentInfo",
    "IngestResult",
    "MemorySample",
    "Store",
    "StoredPair",
    "async_url",
    "upgrade_database",
]

MEM = cast(Table, MemorySampleRow.__table__)
VERDICTS = cast(Table, VerdictRow.__table__)
VSTATE = cast(Table, VerdictStateRow.__table__)
TALLY = cast(Table, QuarantineTallyRow.__table__)
_Q = TypeVar("_Q", bound=Select[Any])
log = logging.getLogger(__name__)
# The default partition on PostgreSQL (comparator.store.partitions): what retention still deletes by row.
_PAIRS_DEFAULT = table(
    DEFAULT, column("experiment_id"), column("request_id"), column("ts"), column("sampled")
)


@dataclass(frozen=True)
class ExperimentInfo:
    name: str
    started_at: datetime
    last_pair_at: datetime | None
    prod_version: str | None
    cand_version: str | None
    task: str | None
    n_pairs: int
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MemorySample:
    ts: datetime
    side: str  # "prod" | "cand"
    kind: str  # "rss" | "gpu"
    value_bytes: float
    limit_bytes: float | None = None


@dataclass(frozen=True)
class StoredPair:
    request_id: str
    ts: datetime
    route: str
    prod_outcome: str
    cand_outcome: str
    prod_status: int | None
    cand_status: int | None
    prod_latency_ms: float | None
    cand_latency_ms: float | None
    prod_class: int | None
    cand_class: int | None
    top1_agree: bool | None
    js: float | None
    abs_diff: float | None
    cosine: float | None
    invalid: bool
    divergence: float | None
    request_body: Any | None
    prod_body: Any | None
    cand_body: Any | None


def _in_range(q: _Q, column: Any, start: datetime | None, end: datetime | None) -> _Q:
    """``q`` limited to ``start <= column < end``; a None bound is open."""
    if start is not None:
        q = q.where(column >= start)
    if end is not None:
        q = q.where(column < end)
    return q


class Store:
    """Async access to one database. Build with :meth:`open`, release with :meth:`close`."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        normalize_config: Callable[[str], NormalizeConfig] | None = None,
        store_bodies: bool = False,
        raw_sample_rate: float = 0.0,
        writes_first: bool = False,
    ) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._normalize_config = normalize_config
        self._ingest = Ingest(
            engine.dialect,
            self._config_for,
            store_bodies=store_bodies,
            raw_sample_rate=raw_sample_rate,
        )
        # SQLite has one writer; queue writers here instead of spinning on busy_timeout.
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        self._writes_first = writes_first
        self._writing = 0  # batches of this store between prepare and commit
        self._no_write = asyncio.Event()
        self._no_write.set()
        self.partitions = Partitions(engine) if self.dialect == "postgresql" else None
        # Written into the looks and memory samples this process stores (comparator.leader).
        self.replica: str | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        upgrade: bool = True,
        normalize_config: Callable[[str], NormalizeConfig] | None = None,
        store_bodies: bool = False,
        raw_sample_rate: float = 0.0,
        writes_first: bool = False,
    ) -> Store:
        """Connect to ``url`` and, when ``upgrade``, apply pending migrations.

        ``normalize_config(experiment)`` gives the output reading rules per experiment (default:
        infer everything); ``store_bodies`` keeps request and response bodies; ``raw_sample_rate``
        is the hash fraction of raw pairs that :meth:`purge_pairs` keeps for drill-down;
        ``writes_first`` holds batches' CPU work back while another batch is written (see
        :meth:`between_writes`), for a process that shares experiments with other writers.
        """
        engine = make_engine(url)
        try:
            if upgrade:
                await upgrade_database(engine)
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            raise StoreError(f"database {make_url(async_url(url))!r}: {exc}") from exc
        store = cls(
            engine,
            normalize_config=normalize_config,
            store_bodies=store_bodies,
            raw_sample_rate=raw_sample_rate,
            writes_first=writes_first,
        )
        if upgrade and store.partitions is not None:
            try:
                await store.partitions.create_ahead()
            except (SQLAlchemyError, OSError) as exc:  # on demand and the next pass try again
                log.warning("pairs: partitions not created ahead at start: %s", exc)
        return store

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- health -------------------------------------------------------------------------------
    async def migration_state(self) -> tuple[str | None, str | None]:
        """(current revision, head revision) of the database."""
        return await migration_state(self.engine)

    async def ready(self) -> bool:
        """The database answers and is migrated to head."""
        try:
            current, head = await asyncio.wait_for(self.migration_state(), timeout=5)
        except (SQLAlchemyError, OSError, TimeoutError):
            return False
        return current == head

    # -- transactions -------------------------------------------------------------------------
    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.connect() as conn:
            await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                yield conn

    def _insert(self, table: Any) -> Any:
        return insert_for(self.dialect, table)

    def _config_for(self, name: str) -> NormalizeConfig:

        return self._normalize_config(name) if self._normalize_config else NormalizeConfig()

    # -- ingest -------------------------------------------------------------------------------
    async def ingest(
        self,
        pairs: list[Pair],
        refused: Sequence[Refused] = (),
        indexes: Sequence[int] | None = None,
    ) -> IngestResult:
        """Store a validated batch in one transaction; pairs already stored are skipped, uncounted.

        ``refused`` (comparator.ingest.screen_body) and the pairs outside the time window go to
        the quarantine in the same transaction; ``indexes`` are the pairs' places in the batch.
        """
        if not pairs and not refused:
            return IngestResult(0, 0, 0)
        # Measured before the write lock, so that this batch's CPU work overlaps other
        # batches' SQL (with writes_first, only other processes' batches: see between_writes).
        await self.between_writes()
        prepared = self._ingest.prepare(pairs, refused, indexes)
        if self.partitions is not None and prepared.parts:
            days = np.unique(np.concatenate([part.times for part in prepared.parts]) // 86_400)
            await self.partitions.ensure(epoch_days(days))
        self._writing += 1
        try:
            async with self._write() as conn:
                return await self._ingest.write(conn, prepared)
        finally:
            self._writing -= 1
            if not self._writing:
                self._no_write.set()

    async def between_writes(self) -> None:
        """With ``writes_first``, wait until no batch of this store is being written: for CPU
        work on the event loop (validating, measuring a batch) to start only then.

        A batch being written holds its experiment's lock, for every process writing that
        experiment, and each of its statements goes on only when the event loop gets back to it:
        a batch validated or measured meanwhile (10-20 ms of CPU at 500 pairs) holds the lock,
        and every other writer, that much longer. PostgreSQL showed it as writers waiting on the
        experiment's row while its holder sat idle in its transaction. It pays with several
        processes writing (``--workers``); a lone process loses by it, as its CPU work no longer
        overlaps its own writes (the README has the ingest benchmark).
        """
        if not self._writes_first:
            return
        while self._writing:  # every waiter wakes at once; the first to go on writes again
            self._no_write.clear()
            await self._no_write.wait()

    async def _merge_hours(
        self, conn: AsyncConnection, experiment_id: int, hours: Mapping[datetime, Aggregate]
    ) -> None:
        """Merge aggregates into the stored hours on an open write transaction (bulk loaders)."""
        await self._ingest.merge_hours(conn, experiment_id, hours)

    # -- reads --------------------------------------------------------------------------------
    @staticmethod
    def _info(r: Any) -> ExperimentInfo:
        return ExperimentInfo(
            name=r.name,
            started_at=r.started_at,
            last_pair_at=r.last_pair_at,
            prod_version=r.prod_version,
            cand_version=r.cand_version,
            task=r.task,
            n_pairs=int(r.n_pairs),
            config=dict(r.config or {}),
        )

    async def list_experiments(self) -> list[ExperimentInfo]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(EXP).order_by(EXP.c.name))).all()
        return [self._info(r) for r in rows]

    async def get_experiment(self, name: str) -> ExperimentInfo | None:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(EXP).where(EXP.c.name == name))).first()
        return None if r is None else self._info(r)

    async def record_drops(self, name: str, proxy_id: str, dropped: Mapping[str, int]) -> bool:
        """Keep a proxy's cumulative drop counts (the largest seen per reason); False if unknown.

        They live in the experiment's ``config["proxy_drops"][proxy_id]``: a handful of numbers per
        proxy process, read by the report.
        """
        async with self._write() as conn:
            q = select(EXP.c.id, EXP.c.config).where(EXP.c.name == name)
            if conn.dialect.name == "postgresql":
                q = q.with_for_update()
            row = (await conn.execute(q)).first()
            if row is None:
                return False
            config = dict(row.config or {})
            drops = {k: dict(v) for k, v in config.get("proxy_drops", {}).items()}
            mine = drops.setdefault(proxy_id, {})
            for reason, count in dropped.items():
                mine[reason] = max(int(mine.get(reason, 0)), int(count))
            config["proxy_drops"] = drops
            await conn.execute(update(EXP).where(EXP.c.id == row.id).values(config=config))
        return True

    async def _experiment_id(self, conn: AsyncConnection, name: str) -> int | None:
        return (await conn.execute(select(EXP.c.id).where(EXP.c.name == name))).scalar()

    async def hourly_aggregates(
        self, name: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[tuple[datetime, Aggregate]]:
        """(UTC hour start, aggregate) of the hours in [start, end), oldest first."""
        q = (
            select(HOURS.c.hour, HOURS.c.data)
            .join(EXP, EXP.c.id == HOURS.c.experiment_id)
            .where(EXP.c.name == name)
            .order_by(HOURS.c.hour)
        )
        q = _in_range(q, HOURS.c.hour, start, end)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [(r.hour, Aggregate.from_json(r.data)) for r in rows]

    async def memory_samples(
        self, name: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[MemorySample]:
        q = (
            select(MEM)
            .join(EXP, EXP.c.id == MEM.c.experiment_id)
            .where(EXP.c.name == name)
            .order_by(MEM.c.ts, MEM.c.id)
        )
        q = _in_range(q, MEM.c.ts, start, end)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [MemorySample(r.ts, r.side, r.kind, r.value_bytes, r.limit_bytes) for r in rows]

    async def add_memory_samples(self, name: str, samples: list[MemorySample]) -> None:
        """Store samples; an experiment seen here first starts at its earliest sample."""
        if not samples:
            return
        async with self._write() as conn:
            eid = await self._experiment_id(conn, name)
            if eid is None:
                now = datetime.now(UTC)
                row = {
                    "name": name,
                    "started_at": min(s.ts for s in samples),
                    "n_pairs": 0,
                    "config": {},
                    "created_at": now,
                }
                await conn.execute(
                    self._insert(EXP).on_conflict_do_nothing(index_elements=["name"]), [row]
                )
                eid = await self._experiment_id(conn, name)
            await conn.execute(
                self._insert(MEM),
                [
                    {
                        "experiment_id": eid,
                        "ts": s.ts,
                        "side": s.side,
                        "kind": s.kind,
                        "value_bytes": float(s.value_bytes),
                        "limit_bytes": None if s.limit_bytes is None else float(s.limit_bytes),
                        "replica": self.replica,
                    }
                    for s in samples
                ],
            )

    async def sample_pairs(
        self,
        name: str,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        limit: int = 20,
        most_divergent: bool = True,
    ) -> list[StoredPair]:
        """Raw pairs for drill-down: the most divergent first, or else the most recent first."""
        q = select(PAIRS).join(EXP, EXP.c.id == PAIRS.c.experiment_id).where(EXP.c.name == name)
        q = _in_range(q, PAIRS.c.ts, start, end)
        if most_divergent:
            q = q.order_by(PAIRS.c.divergence.desc().nulls_last(), PAIRS.c.ts.desc())
        else:
            q = q.order_by(PAIRS.c.ts.desc())
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.limit(limit))).all()
        return [
            StoredPair(
                request_id=r.request_id,
                ts=r.ts,
                route=r.route,
                prod_outcome=r.prod_outcome,
                cand_outcome=r.cand_outcome,
                prod_status=r.prod_status,
                cand_status=r.cand_status,
                prod_latency_ms=r.prod_latency_ms,
                cand_latency_ms=r.cand_latency_ms,
                prod_class=r.prod_class,
                cand_class=r.cand_class,
                top1_agree=r.top1_agree,
                js=r.js,
                abs_diff=r.abs_diff,
                cosine=r.cosine,
                invalid=bool(r.prod_invalid or r.cand_invalid),
                divergence=r.divergence,
                request_body=r.request_body,
                prod_body=r.prod_body,
                cand_body=r.cand_body,
            )
            for r in rows
        ]

    # -- verdicts -----------------------------------------------------------------------------
    async def load_verdict_state(self, name: str) -> dict[str, Any] | None:
        q = select(VSTATE.c.state).join(EXP, EXP.c.id == VSTATE.c.experiment_id)
        async with self.engine.connect() as conn:
            state = (await conn.execute(q.where(EXP.c.name == name))).scalar()
        if state is None or _from_the_future(state.get("at")):
            return None
        return dict(state)

    async def save_verdict(
        self, name: str, at: datetime, decision: str, payload: dict[str, Any], state: dict[str, Any]
    ) -> bool:
        """Append the verdict and replace the state in one transaction.

        Returns True when ``decision`` differs from the previously stored one (or there was none).
        Saves are monotone in time: a look older than the stored state's ``at`` (two looks racing)
        stores nothing and returns False.
        """
        now = datetime.now(UTC)
        async with self._write() as conn:
            eid = await self._experiment_id(conn, name)
            if eid is None:
                raise UnknownExperiment(f"no experiment named {name!r}")
            row = (
                await conn.execute(
                    select(VSTATE.c.decision, VSTATE.c.state)
                    .where(VSTATE.c.experiment_id == eid)
                    .with_for_update()
                )
            ).first()
            prev = row.decision if row is not None else None
            stored_at = (row.state or {}).get("at") if row is not None else None
            if (
                stored_at is not None
                and datetime.fromisoformat(stored_at) > at
                and not _from_the_future(stored_at, now)
            ):
                return False
            await conn.execute(
                self._insert(VERDICTS),
                [
                    {
                        "experiment_id": eid,
                        "at": at,
                        "decision": decision,
                        "payload": payload,
                        "created_at": now,
                        "replica": self.replica,
                    }
                ],
            )
            values = {"decision": decision, "state": state, "updated_at": now}
            upsert = self._insert(VSTATE).values(experiment_id=eid, **values)
            await conn.execute(
                upsert.on_conflict_do_update(index_elements=["experiment_id"], set_=values)
            )
        return prev != decision

    async def latest_verdict(self, name: str) -> dict[str, Any] | None:
        """The newest stored verdict, leaving out any dated ahead of the clock (see _from_the_future)."""
        q = (
            select(VERDICTS.c.payload)
            .join(EXP, EXP.c.id == VERDICTS.c.experiment_id)
            .where(EXP.c.name == name, VERDICTS.c.at <= datetime.now(UTC) + FUTURE_SKEW)
            .order_by(VERDICTS.c.at.desc(), VERDICTS.c.id.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            payload = (await conn.execute(q)).scalar()
        return None if payload is None else dict(payload)

    # -- retention ----------------------------------------------------------------------------
    async def purge_pairs(
        self,
        older_than: datetime,
        *,
        experiment: str | None = None,
        batch_size: int = 10_000,
        max_batches: int = 1_000,
    ) -> int:
        """Delete raw pairs older than ``older_than`` that are not in the kept hash sample.

        Only ``experiment`` when given, else every experiment. Works in bounded batches (one short
        transaction each) so ingest is never blocked for long; aggregates are untouched. Returns
        the number of rows deleted.

        On a partitioned PostgreSQL database and every experiment, whole days go instead
        (:meth:`comparator.store.partitions.Partitions.drop_older`: the days entirely before
        ``older_than``), the days ahead are created, and only ``pairs_default`` is purged by row.
        """
        rows: Any = PAIRS
        deleted = 0
        if experiment is None and self.partitions and await self.partitions.partitioned():
            deleted = await self.partitions.drop_older(older_than)
            await self.partitions.create_ahead()
            rows = _PAIRS_DEFAULT
        q = select(EXP.c.id).order_by(EXP.c.id)
        if experiment is not None:
            q = q.where(EXP.c.name == experiment)
        async with self.engine.connect() as conn:
            ids = list((await conn.execute(q)).scalars())
        for eid in ids:
            for _ in range(max_batches):
                victims = (
                    select(rows.c.request_id)
                    .where(
                        rows.c.experiment_id == eid,
                        rows.c.ts < older_than,
                        rows.c.sampled.is_(False),
                    )
                    .limit(batch_size)
                    .scalar_subquery()
                )
                async with self._write() as conn:
                    res = await conn.execute(
                        delete(rows).where(
                            rows.c.experiment_id == eid,
                            rows.c.ts < older_than,
                            rows.c.request_id.in_(victims),
                        )
                    )
                deleted += res.rowcount
                if res.rowcount < batch_size:
                    break
        return deleted

    async def purge_quarantine(
        self, older_than: datetime, *, batch_size: int = 10_000, max_batches: int = 1_000
    ) -> int:
        """Delete quarantine rows received before ``older_than``, oldest first in bounded
        batches, adding what each batch held to ``quarantine_tally`` (per experiment and reason)
        in the same transaction, so the counts of refused pairs stay whole. Returns the number
        of rows deleted."""
        deleted = 0
        for _ in range(max_batches):
            async with self._write() as conn:
                rows = (
                    await conn.execute(
                        select(QUARANTINE.c.id, QUARANTINE.c.experiment, QUARANTINE.c.reason)
                        .where(QUARANTINE.c.received_at < older_than)
                        .order_by(QUARANTINE.c.id)
                        .limit(batch_size)
                    )
                ).all()
                if not rows:
                    break
                tally = Counter((r.experiment or "", r.reason) for r in rows)
                await conn.execute(
                    delete(QUARANTINE).where(QUARANTINE.c.id.in_([r.id for r in rows]))
                )
                for (experiment, reason), n in sorted(tally.items()):
                    upsert = self._insert(TALLY).values(experiment=experiment, reason=reason, n=n)
                    await conn.execute(
                        upsert.on_conflict_do_update(
                            index_elements=["experiment", "reason"], set_={"n": TALLY.c.n + n}
                        )
                    )
            deleted += len(rows)
            if len(rows) < batch_size:
                break
        return deleted

    async def count_pairs(self, name: str) -> int:
        """Raw pairs stored for ``name`` (a scan: for tests and operators, not for the verdict)."""
        q = select(func.count()).select_from(PAIRS.join(EXP, EXP.c.id == PAIRS.c.experiment_id))
        async with self.engine.connect() as conn:
            return int((await conn.execute(q.where(EXP.c.name == name))).scalar() or 0)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))


#: How far ahead of this machine's clock a stored look's ``at`` may be (clock skew between replicas).
FUTURE_SKEW = timedelta(minutes=5)


def _from_the_future(at: object, now: datetime | None = None) -> bool:
    """True for a stored verdict state dated ahead of the clock by more than :data:`FUTURE_SKEW`.

    Only a look computed with a future ``at`` writes such a state (the read route could, before it
    became read-only). It would block every later periodic save and carry a window nobody observed, so
    it is neither trusted nor kept: the next look starts afresh and replaces it.
    """
    if not isinstance(at, str):
        return False
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when > (now or datetime.now(UTC)) + FUTURE_SKEW
