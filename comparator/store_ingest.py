"""The ingest write path of :class:`comparator.store.Store`: one validated batch, one transaction.

::

    lock the batch's experiments (insert on first sight, then SELECT … FOR UPDATE, by name)
    measure the pairs (comparator.normalize.measure, vectorised)
    INSERT pairs … ON CONFLICT DO NOTHING RETURNING request_id        (bulk, one statement per page)
    fold only the returned, newly stored pairs into their hours (read-modify-write, FOR UPDATE)
    update the experiments' counts

so a retried batch stores and counts nothing twice, and a concurrent batch that overlaps it waits
on the experiment's row lock instead of double-counting. The caller owns the transaction
(``Store._write``); everything here runs on the connection it is given.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from comparator.aggregates import Aggregate
from comparator.models import ExperimentRow, HourlyAggregateRow, PairRow
from comparator.pair_rows import pair_columns, subset, unnest_insert
from comparator.wire import Pair

if TYPE_CHECKING:
    from comparator.normalize import BatchMetrics, NormalizeConfig

__all__ = ["EXP", "HOURS", "KNOWN_TASKS", "PAIRS", "Ingest", "IngestResult", "insert_for"]

KNOWN_TASKS = ("classification", "regression", "embedding", "ranking")
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
        """Insert unseen experiments, then lock every named row (in name order: no deadlock)."""
        now = datetime.now(UTC)
        rows = []
        for name in sorted(first):
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
        q = select(EXP).where(EXP.c.name.in_(sorted(first))).order_by(EXP.c.name).with_for_update()
        return {r.name: r for r in (await conn.execute(q)).all()}

    async def batch(self, conn: AsyncConnection, pairs: list[Pair]) -> IngestResult:
        """Store a validated, non-empty batch on ``conn``; pairs already stored are skipped,
        uncounted."""
        from comparator.normalize import fold, measure

        groups: dict[str, dict[str, Pair]] = {}
        for p in pairs:  # a request id repeated inside one batch counts once
            groups.setdefault(p.experiment, {}).setdefault(p.request_id, p)
        first = {name: next(iter(g.values())) for name, g in groups.items()}
        earliest = {name: min(p.ts for p in g.values()) for name, g in groups.items()}
        for name, g in groups.items():  # versions from the first pair that names them
            first[name] = next((p for p in g.values() if p.prod.model_version), first[name])
        inserted = 0
        exps = await self._lock_experiments(conn, first, earliest)
        for name in sorted(groups):
            exp = exps[name]
            batch = [groups[name][rid] for rid in sorted(groups[name])]
            cfg = self.config_for(name)
            if cfg.task == "auto" and exp.task:
                cfg = dataclasses.replace(cfg, task=exp.task)
            metrics = measure(batch, cfg)
            new_ids = await self._insert_pairs(conn, exp.id, batch, metrics)
            started = min(exp.started_at, earliest[name])
            if new_ids:
                idx = [i for i, p in enumerate(batch) if p.request_id in new_ids]
                new_pairs = [batch[i] for i in idx]
                hours = fold(
                    new_pairs,
                    subset(metrics, idx),
                    experiment_start=started,
                    config=dataclasses.replace(cfg),
                )
                await self.merge_hours(conn, exp.id, hours)
            inserted += len(new_ids)
            task = metrics.task if metrics.task in KNOWN_TASKS else None
            last = max((p.ts for p in batch if p.request_id in new_ids), default=None)
            await conn.execute(
                update(EXP)
                .where(EXP.c.id == exp.id)
                .values(
                    n_pairs=EXP.c.n_pairs + len(new_ids),
                    started_at=started,
                    last_pair_at=max(filter(None, (exp.last_pair_at, last)), default=None),
                    task=exp.task or task,
                    prod_version=exp.prod_version or first[name].prod.model_version,
                    cand_version=exp.cand_version or first[name].candidate.model_version,
                )
            )
        return IngestResult(len(pairs), inserted, len(pairs) - inserted, tuple(sorted(groups)))

    async def _insert_pairs(
        self, conn: AsyncConnection, experiment_id: int, batch: Sequence[Pair], m: BatchMetrics
    ) -> set[str]:
        """Bulk insert; returns the request ids this statement stored (not those already there)."""
        cols = pair_columns(
            experiment_id,
            batch,
            m,
            store_bodies=self.store_bodies,
            sample_rate=self.raw_sample_rate,
        )
        if self.dialect == "postgresql":
            return await self._insert_pairs_unnest(conn, cols)
        stmt = (
            self._insert(PAIRS)
            .on_conflict_do_nothing(index_elements=["experiment_id", "request_id"])
            .returning(PAIRS.c.request_id)
        )
        names = list(cols)
        rows = [
            dict(zip(names, values, strict=True)) for values in zip(*cols.values(), strict=True)
        ]
        result = await conn.execute(stmt, rows)
        return {r[0] for r in result.all()}

    async def _insert_pairs_unnest(
        self, conn: AsyncConnection, cols: dict[str, list[Any]]
    ) -> set[str]:
        """PostgreSQL: the whole batch as one array per column, one statement, one round trip.

        ``INSERT … SELECT * FROM unnest($1::t1[], …)`` skips building and binding one VALUES
        tuple per row, the bulk of the client-side cost of a 500-pair batch.
        """
        for name in ("request_body", "prod_body", "cand_body"):  # jsonb travels as JSON text
            cols[name] = [None if v is None else json.dumps(v) for v in cols[name]]
        result = await conn.execute(unnest_insert(conn.dialect), cols)
        return {r[0] for r in result.all()}

    async def merge_hours(
        self, conn: AsyncConnection, experiment_id: int, hours: Mapping[datetime, Aggregate]
    ) -> None:
        """Merge ``hours`` into the stored hourly rows (created empty first), under row locks."""
        now = datetime.now(UTC)
        keys = sorted(_hour(h) for h in hours)
        await conn.execute(
            self._insert(HOURS).on_conflict_do_nothing(index_elements=["experiment_id", "hour"]),
            [
                {"experiment_id": experiment_id, "hour": h, "data": {}, "updated_at": now}
                for h in keys
            ],
        )
        q = (
            select(HOURS.c.hour, HOURS.c.data)
            .where(HOURS.c.experiment_id == experiment_id, HOURS.c.hour.in_(keys))
            .order_by(HOURS.c.hour)
            .with_for_update()
        )
        stored = {r.hour: Aggregate.from_json(r.data) for r in (await conn.execute(q)).all()}
        for h, agg in hours.items():
            stored[_hour(h)].merge(agg)
        stmt = (
            update(HOURS)
            .where(HOURS.c.experiment_id == bindparam("e_id"), HOURS.c.hour == bindparam("e_hour"))
            .values(data=bindparam("e_data"), updated_at=bindparam("e_now"))
        )
        await conn.execute(
            stmt,
            [
                {"e_id": experiment_id, "e_hour": h, "e_data": stored[h].to_json(), "e_now": now}
                for h in keys
            ],
        )
