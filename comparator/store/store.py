"""The SQL store of pairs, hourly aggregates, memory samples and verdicts (SQLite or PostgreSQL).

One code base serves both databases: ``sqlite:///path`` runs on aiosqlite (WAL, busy timeout, one
writer at a time) and ``postgresql://…`` on asyncpg (row locks). Every look at an experiment reads
``hourly_aggregates`` — O(hours) rows of :class:`~comparator.measure.aggregates.Aggregate` —
never the pairs.

Ingest is one transaction per batch, written by :class:`comparator.store.writer.Ingest` (see there
for why a retried or overlapping batch never counts twice); the reads are in
:mod:`comparator.store.reads`, retention in :mod:`comparator.store.retention`. On PostgreSQL
the pairs are partitioned by day (:mod:`comparator.store.partitions`): a batch creates the partition of
its day first if it has none, and retention drops whole days.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from comparator.exceptions import StoreError, UnknownExperiment
from comparator.ingest import Refused, Screened
from comparator.measure.aggregates import Aggregate
from comparator.measure.normalize import NormalizeConfig
from comparator.store.database import async_url, make_engine, migration_state, upgrade_database
from comparator.store.dialect import EXP, MEM, VERDICTS, VSTATE, insert_for
from comparator.store.partitions import Partitions, epoch_days
from comparator.store.reads import MemorySample, from_the_future
from comparator.store.retention import Retention
from comparator.store.writer import Ingest, IngestResult
from comparator.wire import Pair

__all__ = ["Store"]

log = logging.getLogger(__name__)


class Store(Retention):
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
        the pacing of :meth:`ingest`), for a process that shares experiments with other writers.
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
        pairs: list[Pair] | Callable[[], Screened],
        refused: Sequence[Refused] = (),
        indexes: Sequence[int] | None = None,
    ) -> IngestResult:
        """Store a validated batch in one transaction; pairs already stored are skipped, uncounted.

        ``refused`` (comparator.ingest.screen_body) and the pairs outside the time window go to
        the quarantine in the same transaction; ``indexes`` are the pairs' places in the batch.
        ``pairs`` may instead be the parser of a request body (comparator.ingest.screen_body
        bound to it), called here: so parsing, validating and measuring the batch all wait for
        one turn of the store's pacing (see :meth:`_between_writes`). What the parser raises
        (an :class:`~comparator.exceptions.IngestError`) propagates, nothing stored.
        """
        # Measured before the write lock, so that this batch's CPU work overlaps other
        # batches' SQL (with writes_first, only other processes' batches: see _between_writes).
        await self._between_writes()
        if callable(pairs):
            screened = pairs()
            pairs, refused, indexes = screened.pairs, screened.refused, screened.indexes
        if not pairs and not refused:
            return IngestResult(0, 0, 0)
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

    async def _between_writes(self) -> None:
        """With ``writes_first``, wait until no batch of this store is being written: for CPU
        work on the event loop (validating, measuring a batch) to start only then.

        A batch being written holds its experiment's lock, for every process writing that
        experiment, and each of its statements goes on only when the event loop gets back to it:
        a batch validated or measured meanwhile holds the lock, and every other writer, that much
        longer. PostgreSQL showed it as writers waiting on the experiment's row while its holder
        sat idle in its transaction. It pays with several processes writing (``--workers``); a
        lone process loses by it, as its CPU work no longer overlaps its own writes (the README
        has the ingest benchmark).
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
                and not from_the_future(stored_at, now)
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

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
