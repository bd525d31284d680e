"""The SQL store of pairs, hourly aggregates, memory samples and verdicts (SQLite or PostgreSQL).

One code base serves both databases: ``sqlite:///path`` runs on aiosqlite (WAL, busy timeout, one
writer at a time) and ``postgresql://…`` on asyncpg (row locks). Every look at an experiment reads
``hourly_aggregates`` — O(hours) rows of :class:`~comparator.aggregates.Aggregate` — never the pairs.

Ingest is one transaction per batch::

    lock the batch's experiments (insert on first sight, then SELECT … FOR UPDATE, by name)
    measure the pairs (comparator.normalize.measure, vectorised)
    INSERT pairs … ON CONFLICT DO NOTHING RETURNING request_id        (bulk, one statement per page)
    fold only the returned, newly stored pairs into their hours (read-modify-write, FOR UPDATE)
    update the experiments' counts

so a retried batch stores and counts nothing twice, and a concurrent batch that overlaps it waits
on the experiment's row lock instead of double-counting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, bindparam, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from comparator.aggregates import Aggregate
from comparator.database import async_url, make_engine, migration_state, upgrade_database
from comparator.exceptions import StoreError, UnknownExperiment
from comparator.models import (
    ExperimentRow,
    HourlyAggregateRow,
    MemorySampleRow,
    PairRow,
    VerdictRow,
    VerdictStateRow,
)
from comparator.pair_rows import pair_columns, subset, unnest_insert
from comparator.wire import Pair

if TYPE_CHECKING:
    from comparator.normalize import BatchMetrics, NormalizeConfig

__all__ = [
    "ExperimentInfo",
    "IngestResult",
    "MemorySample",
    "Store",
    "StoredPair",
    "async_url",
    "upgrade_database",
]

KNOWN_TASKS = ("classification", "regression", "embedding", "ranking")
EXP = cast(Table, ExperimentRow.__table__)
PAIRS = cast(Table, PairRow.__table__)
HOURS = cast(Table, HourlyAggregateRow.__table__)
MEM = cast(Table, MemorySampleRow.__table__)
VERDICTS = cast(Table, VerdictRow.__table__)
VSTATE = cast(Table, VerdictStateRow.__table__)


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


@dataclass(frozen=True)
class IngestResult:
    """What one batch did: ``inserted`` pairs are new; ``duplicates`` were already stored."""

    received: int
    inserted: int
    duplicates: int
    experiments: tuple[str, ...] = ()


def _hour(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class Store:
    """Async access to one database. Build with :meth:`open`, release with :meth:`close`."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        normalize_config: Callable[[str], NormalizeConfig] | None = None,
        store_bodies: bool = False,
        raw_sample_rate: float = 0.0,
    ) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._normalize_config = normalize_config
        self._store_bodies = store_bodies
        self._raw_sample_rate = raw_sample_rate
        # SQLite has one writer; queue writers here instead of spinning on busy_timeout.
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        upgrade: bool = True,
        normalize_config: Callable[[str], NormalizeConfig] | None = None,
        store_bodies: bool = False,
        raw_sample_rate: float = 0.0,
    ) -> Store:
        """Connect to ``url`` and, when ``upgrade``, apply pending migrations.

        ``normalize_config(experiment)`` gives the output reading rules per experiment (default:
        infer everything); ``store_bodies`` keeps request and response bodies; ``raw_sample_rate``
        is the hash fraction of raw pairs that :meth:`purge_pairs` keeps for drill-down.
        """
        engine = make_engine(url)
        try:
            if upgrade:
                await upgrade_database(engine)
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            raise StoreError(f"database {make_url(async_url(url))!r}: {exc}") from exc
        return cls(
            engine,
            normalize_config=normalize_config,
            store_bodies=store_bodies,
            raw_sample_rate=raw_sample_rate,
        )

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
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def _config_for(self, name: str) -> NormalizeConfig:
        from comparator.normalize import NormalizeConfig

        return self._normalize_config(name) if self._normalize_config else NormalizeConfig()

    async def _lock_experiments(
        self, conn: AsyncConnection, first: Mapping[str, Pair], earliest: Mapping[str, datetime]
    ) -> dict[str, Any]:
        """Insert unseen experiments, then lock every named row (in name order: no deadlock)."""
        now = datetime.now(UTC)
        rows = []
        for name in sorted(first):
            p = first[name]
            cfg = self._config_for(name)
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

    # -- ingest -------------------------------------------------------------------------------
    async def ingest(self, pairs: list[Pair]) -> IngestResult:
        """Store a validated batch in one transaction; pairs already stored are skipped, uncounted."""
        from comparator.normalize import fold, measure

        groups: dict[str, dict[str, Pair]] = {}
        for p in pairs:  # a request id repeated inside one batch counts once
            groups.setdefault(p.experiment, {}).setdefault(p.request_id, p)
        if not groups:
            return IngestResult(0, 0, 0)
        first = {name: next(iter(g.values())) for name, g in groups.items()}
        earliest = {name: min(p.ts for p in g.values()) for name, g in groups.items()}
        for name, g in groups.items():  # versions from the first pair that names them
            first[name] = next((p for p in g.values() if p.prod.model_version), first[name])
        inserted = 0
        async with self._write() as conn:
            exps = await self._lock_experiments(conn, first, earliest)
            for name in sorted(groups):
                exp = exps[name]
                batch = [groups[name][rid] for rid in sorted(groups[name])]
                cfg = self._config_for(name)
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
                    await self._merge_hours(conn, exp.id, hours)
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
            store_bodies=self._store_bodies,
            sample_rate=self._raw_sample_rate,
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
        result = await conn.execute(unnest_insert(self.engine.dialect), cols)
        return {r[0] for r in result.all()}

    async def _merge_hours(
        self, conn: AsyncConnection, experiment_id: int, hours: Mapping[datetime, Aggregate]
    ) -> None:
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
        if start is not None:
            q = q.where(HOURS.c.hour >= start)
        if end is not None:
            q = q.where(HOURS.c.hour < end)
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
        if start is not None:
            q = q.where(MEM.c.ts >= start)
        if end is not None:
            q = q.where(MEM.c.ts < end)
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
        if start is not None:
            q = q.where(PAIRS.c.ts >= start)
        if end is not None:
            q = q.where(PAIRS.c.ts < end)
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
        return None if state is None else dict(state)

    async def save_verdict(
        self, name: str, at: datetime, decision: str, payload: dict[str, Any], state: dict[str, Any]
    ) -> bool:
        """Append the verdict and replace the state in one transaction.

        Returns True when ``decision`` differs from the previously stored one (or there was none).
        """
        now = datetime.now(UTC)
        async with self._write() as conn:
            eid = await self._experiment_id(conn, name)
            if eid is None:
                raise UnknownExperiment(f"no experiment named {name!r}")
            prev = (
                await conn.execute(
                    select(VSTATE.c.decision).where(VSTATE.c.experiment_id == eid).with_for_update()
                )
            ).scalar()
            await conn.execute(
                self._insert(VERDICTS),
                [
                    {
                        "experiment_id": eid,
                        "at": at,
                        "decision": decision,
                        "payload": payload,
                        "created_at": now,
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
        q = (
            select(VERDICTS.c.payload)
            .join(EXP, EXP.c.id == VERDICTS.c.experiment_id)
            .where(EXP.c.name == name)
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

        Only ``experiment`` when given, else every experiment. Works in bounded batches (one short transaction each) so ingest is never blocked for
        long; aggregates are untouched. Returns the number of rows deleted.
        """
        q = select(EXP.c.id).order_by(EXP.c.id)
        if experiment is not None:
            q = q.where(EXP.c.name == experiment)
        async with self.engine.connect() as conn:
            ids = list((await conn.execute(q)).scalars())
        deleted = 0
        for eid in ids:
            for _ in range(max_batches):
                victims = (
                    select(PAIRS.c.request_id)
                    .where(
                        PAIRS.c.experiment_id == eid,
                        PAIRS.c.ts < older_than,
                        PAIRS.c.sampled.is_(False),
                    )
                    .limit(batch_size)
                    .scalar_subquery()
                )
                async with self._write() as conn:
                    res = await conn.execute(
                        delete(PAIRS).where(
                            PAIRS.c.experiment_id == eid, PAIRS.c.request_id.in_(victims)
                        )
                    )
                deleted += res.rowcount
                if res.rowcount < batch_size:
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
