"""The store's reads: experiments, hourly aggregates, memory samples, sampled pairs, verdicts.

:class:`Reads` is one part of :class:`comparator.store.store.Store`; every look at an experiment
reads ``hourly_aggregates`` — O(hours) rows of :class:`~comparator.measure.aggregates.Aggregate`
— never the pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from comparator.measure.aggregates import Aggregate
from comparator.store.dialect import EXP, HOURS, MEM, PAIRS, VERDICTS, VSTATE

__all__ = ["ExperimentInfo", "MemorySample", "Reads", "StoredPair"]

_Q = TypeVar("_Q", bound=Select[Any])
log = logging.getLogger(__name__)


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


class Reads:
    """Queries on the engine of the store this is part of."""

    engine: AsyncEngine
    dialect: str

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

    async def load_verdict_state(self, name: str) -> dict[str, Any] | None:
        q = select(VSTATE.c.state).join(EXP, EXP.c.id == VSTATE.c.experiment_id)
        async with self.engine.connect() as conn:
            state = (await conn.execute(q.where(EXP.c.name == name))).scalar()
        if state is None or from_the_future(state.get("at")):
            return None
        return dict(state)

    async def latest_verdict(self, name: str) -> dict[str, Any] | None:
        """The newest stored verdict, leaving out any dated ahead of the clock (see from_the_future)."""
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

    async def count_pairs(self, name: str) -> int:
        """Raw pairs stored for ``name`` (a scan: for tests and operators, not for the verdict)."""
        q = select(func.count()).select_from(PAIRS.join(EXP, EXP.c.id == PAIRS.c.experiment_id))
        async with self.engine.connect() as conn:
            return int((await conn.execute(q.where(EXP.c.name == name))).scalar() or 0)


#: How far ahead of this machine's clock a stored look's ``at`` may be (clock skew between replicas).
FUTURE_SKEW = timedelta(minutes=5)


def from_the_future(at: object, now: datetime | None = None) -> bool:
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
