"""Ingest into a big table, and the summary read over many hours: the parts of
``bench/ingest_bench.py`` that fill a database (``--fill-rows``) or time reads (``--summary``)."""

from __future__ import annotations

import contextlib
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest_bench_support import T0, make_pairs
from sqlalchemy import select

from comparator.measure.aggregates import Aggregate, Moments
from comparator.store.dialect import EXP
from comparator.store.store import Store
from comparator.wire import Pair

__all__ = ["bench_summary", "fill_pairs", "fresh_database", "pair_bytes"]


@contextlib.asynccontextmanager
async def fresh_database(url: str) -> Any:
    """A new database on the server of ``url`` (dropped at the end): its SQLAlchemy URL."""
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    name = f"shadowtee_bench_{uuid.uuid4().hex[:10]}"
    admin = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield parsed.set(database=name).render_as_string(hide_password=False)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


# Rows as the comparator stores a classification pair without bodies: outcomes, statuses,
# latencies, classes and the per-pair metrics. g numbers the row, n the rows in all.
_FILL = """
INSERT INTO pairs (experiment_id, request_id, ts, route, request_sha256, prod_outcome,
    cand_outcome, prod_status, cand_status, prod_latency_ms, cand_latency_ms, prod_version,
    cand_version, prod_class, cand_class, top1_agree, js, abs_diff, cosine, prod_invalid,
    cand_invalid, divergence, sampled)
SELECT $1, 'fill-' || g, $2::timestamptz + (g::float8 / $4) * $3::interval,
    '/v2/models/digits/infer', md5(g::text) || md5((g + 1)::text), 'ok', 'ok', 200, 200,
    3 + random() * 2, 3.5 + random() * 2, '1', '2', g % 10, (g + (g % 7 = 0)::int) % 10,
    g % 7 <> 0, random() * 0.01, random() * 0.1, 1 - random() * 0.01, false, false,
    random() * 0.01, false
FROM generate_series($5::bigint, $6::bigint - 1) AS g
"""


async def fill_pairs(url: str, rows: int) -> tuple[float, float]:
    """Store ``rows`` pairs of one experiment in SQL, spread over the 46 hours before the last
    two (their days' partitions created first), then VACUUM ANALYZE and CHECKPOINT, so that the
    measurements after it do not share the machine with the fill's aftermath (autovacuum of the
    new rows, their dirty pages); seconds taken by each step."""
    import asyncpg
    from sqlalchemy.engine import make_url

    store = await Store.open(url)
    try:
        assert store.partitions is not None, "--fill-rows needs PostgreSQL"
        first = [Pair.model_validate(d) for d in make_pairs("bench-fill", 0, 1, random.Random(6))]
        await store.ingest(first)
        now = datetime.now(UTC)
        start, span = now - timedelta(hours=48), timedelta(hours=46)
        days = {(start + span * k / 8).date() for k in range(9)}
        await store.partitions.create(days)
        eid = await _scalar(store, "SELECT id FROM experiments WHERE name = 'bench-fill'")
    finally:
        await store.close()
    conn = await asyncpg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        t = time.perf_counter()
        step = 1_000_000
        for lo in range(0, rows, step):  # statements of a bounded size
            await conn.execute(_FILL, eid, start, span, rows, lo, min(rows, lo + step))
        filled = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE) pairs")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
        return filled - t, time.perf_counter() - filled
    finally:
        await conn.close()


async def _scalar(store: Store, sql: str) -> Any:
    from sqlalchemy import text

    async with store.engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar()


async def pair_bytes(url: str) -> tuple[int, int]:
    """(pairs stored, bytes of ``pairs`` with its indexes over all partitions)."""
    store = await Store.open(url)
    try:
        n = int(await _scalar(store, "SELECT count(*) FROM pairs"))
        size = int(
            await _scalar(
                store,
                "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
                "WHERE inhparent = 'pairs'::regclass",
            )
        )
        return n, size
    finally:
        await store.close()


def scaled(agg: Aggregate, k: int) -> Aggregate:
    """``agg`` as if every pair in it had been seen ``k`` times (same shape, k× the counts)."""
    return Aggregate(
        counters={n: c * k for n, c in agg.counters.items()},
        moments={n: Moments(m.n * k, m.mean, m.m2 * k) for n, m in agg.moments.items()},
        hists={n: {b: c * k for b, c in h.items()} for n, h in agg.hists.items()},
        cats={n: {b: c * k for b, c in h.items()} for n, h in agg.cats.items()},
    )


async def bench_summary(
    url: str, total: int, hours: int = 48, per_hour: int = 500
) -> tuple[float, int]:
    """Seconds for summarize() of an experiment of ``total`` pairs over ``hours`` hours.

    Each hour's aggregate is the real fold of ``per_hour`` generated pairs, scaled to
    ``total / hours`` pairs: the summary reads aggregates only, so this is the same work as
    after ingesting ``total`` raw pairs (which this benchmark does not store).
    """
    from comparator.judge.summary import summarize
    from comparator.measure.fold import fold
    from comparator.measure.normalize import NormalizeConfig, measure

    store = await Store.open(url)
    exp = f"bench-sum-{uuid.uuid4().hex[:8]}"
    rng = random.Random(3)
    try:
        first = [Pair.model_validate(d) for d in make_pairs(exp, 0, 1, rng, T0)]
        await store.ingest(first)
        info = await store.get_experiment(exp)
        assert info is not None
        cfg = NormalizeConfig(warmup_minutes=0)
        k = max(1, total // (hours * per_hour))
        rows: dict[datetime, Aggregate] = {}
        for h in range(hours):
            pairs = [
                Pair.model_validate({**d, "ts": (T0 + timedelta(hours=h, seconds=i)).isoformat()})
                for i, d in enumerate(make_pairs(exp, 1 + h * per_hour, per_hour, rng, T0))
            ]
            hour_aggs = fold(pairs, measure(pairs, cfg), experiment_start=T0, config=cfg)
            for hour, agg in hour_aggs.items():
                rows[hour] = scaled(agg, k)
        async with store._write() as conn:
            eid = (await conn.execute(select(EXP.c.id).where(EXP.c.name == exp))).scalar_one()
            await store._merge_hours(conn, eid, rows)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            summary = await summarize(store, exp)
            times.append(time.perf_counter() - t)
        return statistics.median(times), int(summary["pairs"])
    finally:
        await store.close()
