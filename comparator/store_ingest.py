"""The ingest write path of :class:`comparator.store.Store`: one validated batch, one transaction.

::

    lock the batch's experiments (SELECT … FOR UPDATE by name; insert on first sight, lock again)
    SELECT the batch's request ids already stored                      (one statement)
    measure the pairs (comparator.normalize.measure, vectorised)
    bulk-load only the new pairs: COPY on PostgreSQL, executemany on SQLite
    fold the new pairs into their hours (read-modify-write of the touched hour rows, FOR UPDATE)
    update the experiments' counts

Every writer of an experiment's pairs holds that experiment's row lock (on SQLite, the database's
write lock taken by ``BEGIN IMMEDIATE``) from the lock until commit, so the ids read as stored are
exactly those a plain insert would collide with: a retried batch stores and counts nothing twice,
and a concurrent batch that overlaps it waits instead of double-counting. Should a stored id slip
through anyway, the insert fails on the primary key and the whole batch rolls back — never a silent
double. The caller owns the transaction (``Store._write``); everything here runs on the connection
it is given.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from comparator.aggregates import Aggregate
from comparator.exceptions import StoreError
from comparator.models import ExperimentRow, HourlyAggregateRow, PairRow
from comparator.pair_rows import COLUMNS, pair_columns, pair_records, subset
from comparator.wire import Pair

if TYPE_CHECKING:
    from comparator.normalize import BatchMetrics, NormalizeConfig

__all__ = ["EXP", "HOURS", "KNOWN_TASKS", "PAIRS", "Ingest", "IngestResult", "insert_for"]

KNOWN_TASKS = ("classification", "regression", "embedding", "ranking")
T = TypeVar("T")
_SQLITE_INSERT = (
    f"INSERT INTO pairs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
)
_SQLITE_STORED = (
    "SELECT request_id FROM pairs WHERE experiment_id = ? "
    "AND request_id IN (SELECT value FROM json_each(?))"
)
_PG_STORED = (
    "SELECT request_id FROM pairs WHERE experiment_id = $1 AND request_id = ANY($2::varchar[])"
)
EXP = cast(Table, ExperimentRow.__table__)
PAIRS = cast(Table, PairRow.__table__)
HOURS = cast(Table, HourlyAggregateRow.__table__)


@dataclass(frozen=True)
class IngestResult:
    """What one batch did: ``inserted`` pairs are new; ``duplicates`` were already stored."""

    received: int
    inserted: int
    duplicates: int
    experiments: tuple[str, ...] = ()


def insert_for(dialect: str, table: Any) -> Any:
    """An INSERT of the dialect that knows ``ON CONFLICT`` (PostgreSQL, else SQLite)."""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _stamps(pairs: Sequence[Pair]) -> NDArray[np.float64]:
    """The pairs' ``ts`` as POSIX seconds, which keep the order of distinct microseconds: much
    cheaper to compare than aware datetimes one pair at a time."""
    return np.array([p.ts.timestamp() for p in pairs], dtype=np.float64)


async def _driver_connection(conn: AsyncConnection) -> Any:
    """The driver's own connection (aiosqlite or asyncpg) under ``conn``, in its transaction."""
    return (await conn.get_raw_connection()).driver_connection


async def _driver_call(call: Awaitable[T], what: str) -> T:
    """Await a statement sent past SQLAlchemy, its driver's errors raised as :class:`StoreError`
    (the failure the caller answers with 503), as SQLAlchemy would have wrapped them."""
    import sqlite3

    import asyncpg

    try:
        return await call
    except (sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StoreError(f"{what} refused: {exc}") from exc


def _hour(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Ingest:
    """The store's ingest settings; :meth:`batch` writes one batch on an open write transaction.

    ``config_for(experiment)`` gives the output reading rules; ``store_bodies`` keeps request and
    response bodies; ``raw_sample_rate`` is the hash fraction of raw pairs kept past retention.
    """

    dialect: str
    config_for: Callable[[str], NormalizeConfig]
    store_bodies: bool = False
    raw_sample_rate: float = 0.0

    def _insert(self, table: Any) -> Any:
        return insert_for(self.dialect, table)

    async def _lock_experiments(
        self, conn: AsyncConnection, first: Mapping[str, Pair], earliest: Mapping[str, datetime]
    ) -> dict[str, Any]:
        """Lock every named row (in name order: no deadlock), inserting unseen experiments first."""
        names = sorted(first)
        q = select(EXP).where(EXP.c.name.in_(names)).order_by(EXP.c.name).with_for_update()
        locked = {r.name: r for r in (await conn.execute(q)).all()}
        if len(locked) == len(names):
            return locked
        now = datetime.now(UTC)
        rows = []
        for name in names:
            if name in locked:
                continue
            p = first[name]
            cfg = self.config_for(name)
            rows.append(
                {
                    "name": name,
                    "started_at": earliest[name],
                    "last_pair_at": None,
                    "prod_version": p.prod.model_version,
                    "cand_version": p.candidate.model_version,
                    "task": cfg.task if cfg.task in KNOWN_TASKS else None,
                    "n_pairs": 0,
                    "config": dataclasses.asdict(cfg),
                    "created_at": now,
                }
            )
        await conn.execute(self._insert(EXP).on_conflict_do_nothing(index_elements=["name"]), rows)
        return {r.name: r for r in (await conn.execute(q)).all()}

    async def batch(self, conn: AsyncConnection, pairs: list[Pair]) -> IngestResult:
        """Store a validated, non-empty batch on ``conn``; pairs already stored are skipped,
        uncounted."""
        from comparator.normalize import fold, measure

        groups: dict[str, dict[str, Pair]] = {}
        for p in pairs:  # a request id repeated inside one batch counts once
            groups.setdefault(p.experiment, {}).setdefault(p.request_id, p)
        first = {name: next(iter(g.values())) for name, g in groups.items()}
        # Each experiment's pairs in request-id order, with their POSIX times (see _extreme).
        ordered = {name: [g[rid] for rid in sorted(g)] for name, g in groups.items()}
        stamps = {name: _stamps(b) for name, b in ordered.items()}
        earliest = {name: b[int(np.argmin(stamps[name]))].ts for name, b in ordered.items()}
        for name, g in groups.items():  # versions from the first pair that names them
            first[name] = next((p for p in g.values() if p.prod.model_version), first[name])
        inserted = 0
        exps = await self._lock_experiments(conn, first, earliest)
        for name in sorted(groups):
            exp = exps[name]
            batch, times = ordered[name], stamps[name]
            cfg = self.config_for(name)
            if cfg.task == "auto" and exp.task:
                cfg = dataclasses.replace(cfg, task=exp.task)
            stored = await self._stored_ids(conn, exp.id, [p.request_id for p in batch])
            metrics = measure(batch, cfg)
            started = min(exp.started_at, earliest[name])
            new_pairs: list[Pair] = []
            if len(stored) < len(batch):
                if stored:
                    idx = [i for i, p in enumerate(batch) if p.request_id not in stored]
                    new_pairs, metrics = [batch[i] for i in idx], subset(metrics, idx)
                    times = times[idx]
                else:
                    new_pairs = batch
                await self._insert_pairs(conn, exp.id, new_pairs, metrics)
                hours = fold(new_pairs, metrics, experiment_start=started, config=cfg, stamps=times)
                await self.merge_hours(conn, exp.id, hours)
            inserted += len(new_pairs)
            task = metrics.task if metrics.task in KNOWN_TASKS else None
            last = new_pairs[int(np.argmax(times))].ts if new_pairs else None
            await conn.execute(
                update(EXP)
                .where(EXP.c.id == exp.id)
                .values(
                    n_pairs=EXP.c.n_pairs + len(new_pairs),
                    started_at=started,
                    last_pair_at=max(filter(None, (exp.last_pair_at, last)), default=None),
                    task=exp.task or task,
                    prod_version=exp.prod_version or first[name].prod.model_version,
                    cand_version=exp.cand_version or first[name].candidate.model_version,
                )
            )
        return IngestResult(len(pairs), inserted, len(pairs) - inserted, tuple(sorted(groups)))

    async def _stored_ids(
        self, conn: AsyncConnection, experiment_id: int, request_ids: Sequence[str]
    ) -> set[str]:
        """The ids among ``request_ids`` already stored for the experiment (exact under its lock).

        The ids travel as one parameter — an array on PostgreSQL, a JSON array read by
        ``json_each`` on SQLite — so the statement neither grows with the batch nor meets
        SQLite's limit on bound variables. Sent on the driver's connection, inside the open
        transaction: the values are plain strings, and SQLAlchemy's aiosqlite adapter spends four
        thread hand-offs on a query that aiosqlite runs in one.
        """
        raw = await _driver_connection(conn)
        ids = list(request_ids)
        if self.dialect == "postgresql":
            rows = await _driver_call(raw.fetch(_PG_STORED, experiment_id, ids), "id lookup")
        else:
            rows = await _driver_call(
                raw.execute_fetchall(_SQLITE_STORED, (experiment_id, json.dumps(ids))), "id lookup"
            )
        return {r[0] for r in rows}

    async def _insert_pairs(
        self, conn: AsyncConnection, experiment_id: int, batch: Sequence[Pair], m: BatchMetrics
    ) -> None:
        """Bulk-load pairs known to be new: one COPY (PostgreSQL) or one executemany (SQLite).

        Both skip SQL compilation and per-row parameter handling, the bulk of the client-side cost
        of a 500-pair batch; the rows are converted column-wise by :func:`pair_records`.
        """
        cols = pair_columns(
            experiment_id,
            batch,
            m,
            store_bodies=self.store_bodies,
            sample_rate=self.raw_sample_rate,
        )
        records = pair_records(cols, conn.dialect)
        # On the driver's connection, inside the transaction SQLAlchemy has open on it.
        raw = await _driver_connection(conn)
        what = f"bulk load of {len(records)} pairs"
        if self.dialect == "postgresql":  # asyncpg's binary COPY
            await _driver_call(
                raw.copy_records_to_table(PAIRS.name, records=records, columns=COLUMNS), what
            )
        else:
            await _driver_call(raw.executemany(_SQLITE_INSERT, records), what)

    async def merge_hours(
        self, conn: AsyncConnection, experiment_id: int, hours: Mapping[datetime, Aggregate]
    ) -> None:
        """Merge ``hours`` into the stored hourly rows: one locked read of the touched hours, the
        merge in memory, one bulk update and, for hours not stored yet, one bulk insert.

        The caller holds the experiment's lock (see the module docstring), so no other writer can
        insert one of those hours in between; if one did, the insert fails rather than lose counts.
        """
        now = datetime.now(UTC)
        merged: dict[datetime, Aggregate] = {}
        for h, agg in hours.items():
            merged.setdefault(_hour(h), Aggregate()).merge(agg)
        keys = sorted(merged)
        q = (
            select(HOURS.c.hour, HOURS.c.data)
            .where(HOURS.c.experiment_id == experiment_id, HOURS.c.hour.in_(keys))
            .order_by(HOURS.c.hour)
            .with_for_update()
        )
        stored = {r.hour: Aggregate.from_json(r.data) for r in (await conn.execute(q)).all()}
        fresh = [h for h in keys if h not in stored]
        if fresh:
            await conn.execute(
                insert(HOURS),
                [
                    {
                        "experiment_id": experiment_id,
                        "hour": h,
                        "data": merged[h].to_json(),
                        "updated_at": now,
                    }
                    for h in fresh
                ],
            )
        if stored:
            stmt = (
                update(HOURS)
                .where(
                    HOURS.c.experiment_id == bindparam("e_id"), HOURS.c.hour == bindparam("e_hour")
                )
                .values(data=bindparam("e_data"), updated_at=bindparam("e_now"))
            )
            await conn.execute(
                stmt,
                [
                    {
                        "e_id": experiment_id,
                        "e_hour": h,
                        "e_data": agg.merge(merged[h]).to_json(),
                        "e_now": now,
                    }
                    for h, agg in sorted(stored.items())
                ],
            )
