"""Ingest throughput of the comparator store (pairs/s at batch 500) on SQLite and PostgreSQL.

Measures what ``POST /v1/pairs`` does after parsing: ``Store.ingest`` of validated pairs — one
transaction per batch, normalisation, bulk load of the new pairs, hourly fold — from one process
and, with ``--writers N``, from N processes on one database and experiment together (what N
comparator replicas or ``--workers N`` do); with ``--http``, the whole HTTP path (request, parse,
validate, store) from one client, and with ``--http-workers N`` through ``shadowtee comparator
--workers N`` from 2N clients. Pairs carry OIP v2 classification outputs (10 classes), like the
demo's digits models.

    .venv/bin/python bench/ingest_bench.py --db sqlite:////tmp/bench.db \
        --db postgresql://postgres@127.0.0.1:5432/postgres --batches 40 --repeat 3 \
        --writers 2 --http --http-workers 2 --summary

A fleet on PostgreSQL: ``--replicas 1,2,3`` runs that many independent ``shadowtee comparator``
processes on one database, each on its own port, two clients per replica spread over them, side
by side in one run; ``--fill-rows N`` (default 10^7) measures ingest, through ``Store.ingest`` and
through one replica, into a new database with an empty ``pairs`` and again after filling it with N
pairs in SQL (generate_series, spread over the previous two days' partitions), and prints the
bytes a stored pair takes (``pg_total_relation_size`` of the pairs and their indexes per row):

    .venv/bin/python bench/ingest_bench.py --db postgresql://postgres@127.0.0.1:5432/postgres \
        --only-fleet --replicas 1,2,3 --fill-rows 10000000 --batches 60 --repeat 1

Each measurement runs ``--repeat`` times, each on a fresh experiment name (so the database may be
reused), and prints the median, the best and every run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select

from comparator.app import GC_THRESHOLDS, tune_gc
from comparator.measure.aggregates import Aggregate, Moments
from comparator.store import Store
from comparator.store.dialect import EXP
from comparator.wire import Pair

T = TypeVar("T")
T0 = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
# Pairs of the ingest runs are dated in the last hour, as live traffic is: on a partitioned
# PostgreSQL they land in today's (or yesterday's) partition, not the default one.
RECENT = datetime.now(UTC) - timedelta(hours=1)


def make_pairs(
    exp: str, start: int, n: int, rng: random.Random, t0: datetime | None = None
) -> list[dict[str, Any]]:
    out = []
    for i in range(start, start + n):
        p = [rng.random() for _ in range(10)]
        q = [max(0.0, v + rng.uniform(-0.05, 0.05)) for v in p]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        cand_ok = rng.random() > 0.02
        out.append(
            {
                "request_id": f"{exp}-{i}",
                "experiment": exp,
                "ts": (
                    t0 + timedelta(seconds=i * 0.05)
                    if t0 is not None
                    else RECENT + timedelta(seconds=(i % 1_000_000) * 0.003)
                ).isoformat(),
                "route": "/v2/models/digits/infer",
                "request": {"sha256": hashlib.sha256(str(i).encode()).hexdigest()},
                "prod": {
                    "outcome": "ok",
                    "status": 200,
                    "latency_ms": rng.lognormvariate(1.2, 0.4),
                    "model_version": "1",
                    "body": {"outputs": [{"name": "probabilities", "shape": [1, 10], "data": p}]},
                },
                "candidate": {
                    "outcome": "ok" if cand_ok else "timeout",
                    "status": 200 if cand_ok else None,
                    "latency_ms": rng.lognormvariate(1.3, 0.4) if cand_ok else 250.0,
                    "model_version": "2",
                    "body": {"outputs": [{"name": "probabilities", "shape": [1, 10], "data": q}]}
                    if cand_ok
                    else None,
                },
            }
        )
    return out


def encoded_batches(
    exp: str, start: int, batches: int, size: int, rng: random.Random
) -> list[bytes]:
    """``batches`` ingest bodies of ``size`` pairs, ids from ``start`` on, as JSON bytes."""
    return [
        json.dumps({"pairs": make_pairs(exp, start + b * size, size, rng)}).encode()
        for b in range(batches)
    ]


async def bench_store(url: str, batches: int, size: int) -> tuple[float, float]:
    """(pairs/s of fresh batches, pairs/s of a retried one) through ``Store.ingest``.

    Batches wait as JSON bytes, as they arrive at the server, and each is validated just before
    its (timed) ingest: only the batch in flight is alive, as in the server, so the garbage
    collector sees the live set it would see there rather than every batch of the run.
    """
    from comparator.ingest import validate_json_body

    store = await Store.open(url)
    exp = f"bench-{uuid.uuid4().hex[:8]}"
    rng = random.Random(1)
    bodies = encoded_batches(exp, 0, batches, size, rng)
    times = []
    try:
        # warm-up: first-sight insert of the experiment, caches
        await store.ingest(validate_json_body(bodies[0]))
        for body in bodies[1:]:
            batch = validate_json_body(body)
            t = time.perf_counter()
            await store.ingest(batch)
            times.append(time.perf_counter() - t)
        batch = validate_json_body(bodies[1])
        t = time.perf_counter()
        await store.ingest(batch)  # a retried batch: all duplicates
        retry = time.perf_counter() - t
    finally:
        await store.close()
    return size * len(times) / sum(times), size / retry


def _writer(
    url: str, exp: str, index: int, batches: int, size: int, barrier: Any, results: Any
) -> None:
    """One writer process of :func:`bench_writers`: its own store, its own request ids."""
    from comparator.ingest import validate_json_body

    async def main() -> None:
        store = await Store.open(url)
        try:
            rng = random.Random(100 + index)
            start = (index + 1) * 1_000_000
            bodies = encoded_batches(exp, start, batches, size, rng)
            await store.ingest(validate_json_body(bodies[0]))  # warm-up, as in bench_store
            ready = [validate_json_body(body) for body in bodies[1:]]
            del bodies
            # What is validated waits out of the collector's reach: in the server only the batch
            # in flight is alive (see bench_store).
            tune_gc()
            barrier.wait(timeout=120)
            t = time.perf_counter()
            for batch in ready:
                await store.ingest(batch)
            results.put((t, time.perf_counter(), size * len(ready)))
        finally:
            await store.close()

    asyncio.run(main())


async def bench_writers(url: str, writers: int, batches: int, size: int) -> float:
    """Pairs/s that ``writers`` processes sustain together, each with its own ``Store`` on one
    database and experiment, as comparator replicas (or ``--workers``) do: wall time from a common
    start to the last writer's end."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    exp = f"bench-w-{uuid.uuid4().hex[:8]}"

    await (await Store.open(url)).close()  # migrated once, before the writers open it
    barrier, results = ctx.Barrier(writers), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(url, exp, i, batches, size, barrier, results))
        for i in range(writers)
    ]
    for proc in procs:
        proc.start()
    try:
        done = await asyncio.to_thread(lambda: [results.get(timeout=600) for _ in procs])
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    start, end = min(d[0] for d in done), max(d[1] for d in done)
    return sum(d[2] for d in done) / (end - start)


async def bench_http(url: str, batches: int, size: int) -> float:
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from comparator.app import create_app
    from comparator.settings import ComparatorSettings

    exp = f"bench-{uuid.uuid4().hex[:8]}"
    rng = random.Random(2)
    # Encoded up front: the proxy that sends them is another process, not part of the cost.
    bodies = encoded_batches(exp, 0, batches, size, rng)
    # No periodic looks: the first one judges every experiment in the database at start-up, and
    # a reused benchmark database holds many, so it would be timed in place of the ingest.
    settings = ComparatorSettings(db=url, verdict_interval_s=0)
    runner = web.AppRunner(create_app(settings, CollectorRegistry()))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        return await _post_all(base, bodies, size)
    finally:
        await runner.cleanup()


async def bench_http_workers(url: str, workers: int, batches: int, size: int) -> float:
    """Pairs/s through ``shadowtee comparator --workers N`` (a subprocess), ``2N`` clients posting
    at once, each on a connection of its own: the kernel spreads the connections over the workers.
    """
    import subprocess
    import sys

    import aiohttp

    from shadowtee.supervise import free_port

    exp = f"bench-hw-{uuid.uuid4().hex[:8]}"
    rng = random.Random(4)
    bodies = encoded_batches(exp, 0, batches, size, rng)
    port = free_port()
    argv = [sys.executable, "-m", "shadowtee", "--log-level", "WARNING", "comparator",
            "--workers", str(workers), "--listen", f"127.0.0.1:{port}", "--db", url,
            "--verdict-interval-s", "0"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Content-Type": "application/json"}
    try:
        async with aiohttp.ClientSession(base_url=base) as http:
            for _ in range(600):  # up to a minute for the workers to start
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get("/health/ready") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
            async with http.post("/v1/pairs", data=bodies[0], headers=headers) as r:
                assert r.status == 200, await r.text()  # first sight of the experiment
        queue = iter(bodies[1:])

        async def client() -> None:
            conn = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(base_url=base, connector=conn) as http:
                for body in queue:
                    async with http.post("/v1/pairs", data=body, headers=headers) as r:
                        assert r.status == 200, await r.text()

        t = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(2 * workers)))
        return size * (len(bodies) - 1) / (time.perf_counter() - t)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=60)


def cpu_seconds(pids: set[int] | None = None, comm: str | None = None) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids``, or by every process
    named ``comm`` (read from /proc; Linux only)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or (pids is not None and int(entry) not in pids):
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
        if comm is not None and name != comm:
            continue
        fields = rest.split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


async def bench_replicas(
    url: str, replicas: int, batches: int, size: int
) -> tuple[float, float, float]:
    """Pairs/s through ``replicas`` independent ``shadowtee comparator`` processes on one
    database, each on its own port, ``2 x replicas`` clients spread over them (client k posts to
    replica k mod n), all posting the batches of one experiment; with the CPU seconds per 1000
    pairs of the replicas and of every ``postgres`` process on this machine (PostgreSQL's
    background work and other users of the server included)."""
    import subprocess
    import sys

    import aiohttp

    from shadowtee.supervise import free_port

    exp = f"bench-r-{uuid.uuid4().hex[:8]}"
    bodies = encoded_batches(exp, 0, batches, size, random.Random(5))
    procs, bases = [], []
    for _ in range(replicas):
        port = free_port()
        argv = [sys.executable, "-m", "shadowtee", "--log-level", "WARNING", "comparator",
                "--listen", f"127.0.0.1:{port}", "--db", url,
                "--verdict-interval-s", "0"]  # fmt: skip
        procs.append(
            await asyncio.create_subprocess_exec(
                *argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        bases.append(f"http://127.0.0.1:{port}")
    headers = {"Content-Type": "application/json"}
    try:
        async with aiohttp.ClientSession() as http:
            for base in bases:
                for _ in range(600):  # up to a minute for each replica to start
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"{base}/health/ready") as r:
                            if r.status == 200:
                                break
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError(f"replica {base} never got ready")
            async with http.post(f"{bases[0]}/v1/pairs", data=bodies[0], headers=headers) as r:
                assert r.status == 200, await r.text()  # first sight of the experiment
        queue = iter(bodies[1:])

        async def client(base: str) -> None:
            conn = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(base_url=base, connector=conn) as http:
                for body in queue:
                    async with http.post("/v1/pairs", data=body, headers=headers) as r:
                        assert r.status == 200, await r.text()

        pids = {proc.pid for proc in procs}
        cpu0, pg0 = cpu_seconds(pids), cpu_seconds(comm="postgres")
        t = time.perf_counter()
        await asyncio.gather(*(client(bases[k % replicas]) for k in range(2 * replicas)))
        wall = time.perf_counter() - t
        kilo = size * (len(bodies) - 1) / 1000
        cpu, pg = cpu_seconds(pids) - cpu0, cpu_seconds(comm="postgres") - pg0
        return kilo * 1000 / wall, cpu / kilo, pg / kilo
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), timeout=60)


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


async def bench_fill(url: str, rows: int, batches: int, size: int, repeat: int) -> None:
    """Ingest into an empty ``pairs`` and into one holding ``rows`` pairs: two new databases on
    the server, one filled first, then each run measured on one and then the other, so that the
    machine's drift falls on both alike."""
    async with fresh_database(url) as empty, fresh_database(url) as full:
        await (await Store.open(empty)).close()
        secs, settle = await fill_pairs(full, rows)
        print(
            f"postgresql  filled {rows:,} pairs in SQL in {secs:,.0f} s "
            f"(VACUUM ANALYZE and CHECKPOINT {settle:,.0f} s)"
        )
        labels = {empty: "empty", full: f"{rows:,} pairs"}
        store_rates: dict[str, list[float]] = {db: [] for db in labels}
        http_rates: dict[str, list[float]] = {db: [] for db in labels}
        for _ in range(repeat):
            for db in labels:
                store_rates[db].append((await bench_store(db, batches, size))[0])
                http_rates[db].append((await bench_replicas(db, 1, batches, size))[0])
        for db, label in labels.items():
            print(f"postgresql  table {label:>16s}: store.ingest {_runs(store_rates[db])}")
            print(f"postgresql  table {label:>16s}: 1 replica    {_runs(http_rates[db])}")
        for db, what in ((empty, "by HTTP and Store.ingest"), (full, "most filled in SQL")):
            n, used = await pair_bytes(db)
            print(f"postgresql  bytes per stored pair: {used / n:,.0f} ({n:,} pairs, {what})")


async def _post_all(base: str, bodies: list[bytes], size: int) -> float:
    import aiohttp

    async with aiohttp.ClientSession(base_url=base) as http:
        headers = {"Content-Type": "application/json"}
        async with http.post("/v1/pairs", data=bodies[0], headers=headers) as r:
            assert r.status == 200, await r.text()
        t = time.perf_counter()
        for body in bodies[1:]:
            async with http.post("/v1/pairs", data=body, headers=headers) as r:
                assert r.status == 200, await r.text()
        return size * (len(bodies) - 1) / (time.perf_counter() - t)


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


async def _repeat(times: int, bench: Callable[..., Awaitable[T]], *args: Any) -> list[T]:
    """``times`` runs of ``bench(*args)``, one after the other."""
    return [await bench(*args) for _ in range(times)]


def _runs(rates: list[float]) -> str:
    """``22,806 pairs/s median, 24,356 best (runs 22,806, 24,356, 21,735)``."""
    return (
        f"{statistics.median(rates):9,.0f} pairs/s median, {max(rates):,.0f} best "
        f"(runs {', '.join(f'{r:,.0f}' for r in rates)})"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", action="append", required=True, help="database URL (repeatable)")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs of each measurement; the median is shown"
    )
    ap.add_argument("--http", action="store_true", help="also measure through POST /v1/pairs")
    ap.add_argument(
        "--http-workers",
        default="",
        help="with --http, also through `shadowtee comparator --workers N`, e.g. 2",
    )
    ap.add_argument(
        "--writers",
        default="",
        help="also measure N writer processes on one database together, e.g. 2 or 2,3",
    )
    ap.add_argument(
        "--summary", action="store_true", help="also time the summary at 1e5, 1e6, 1e7 pairs"
    )
    ap.add_argument(
        "--replicas",
        default="",
        help="PostgreSQL: also through N independent comparator processes, e.g. 1,2,3",
    )
    ap.add_argument(
        "--fill-rows",
        type=int,
        default=0,
        help="PostgreSQL: ingest into an empty table vs one filled with N pairs (e.g. 10000000)",
    )
    ap.add_argument(
        "--only-fleet",
        action="store_true",
        help="only the --replicas and --fill-rows measurements",
    )
    args = ap.parse_args()
    # The collector settings the comparator server runs with (comparator.app.run).
    tune_gc()
    print(
        f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}, "
        f"cpus {os.cpu_count()}, gc thresholds {GC_THRESHOLDS} (as the comparator server)"
    )
    for url in args.db:
        kind = url.split(":", 1)[0]
        if kind.startswith("postgres"):
            for n in [int(w) for w in args.replicas.split(",") if w]:
                got = await _repeat(
                    args.repeat, bench_replicas, url, n, args.batches, args.batch_size
                )
                cpu = statistics.median(g[1] for g in got)
                pg = statistics.median(g[2] for g in got)
                print(
                    f"{kind:11s} POST /v1/pairs batch {args.batch_size}: "
                    f"{_runs([g[0] for g in got])} ({n} replica{'s' if n > 1 else ''}, "
                    f"{2 * n} clients); CPU s per 1000 pairs: comparators {cpu:.3f}, "
                    f"postgres {pg:.3f}"
                )
            if args.fill_rows:
                await bench_fill(url, args.fill_rows, args.batches, args.batch_size, args.repeat)
        if args.only_fleet:
            continue
        runs = await _repeat(args.repeat, bench_store, url, args.batches, args.batch_size)
        rate = statistics.median(r[0] for r in runs)
        best = max(r[0] for r in runs)
        retry = statistics.median(r[1] for r in runs)
        print(
            f"{kind:11s} store.ingest  batch {args.batch_size}: {rate:9,.0f} pairs/s median, "
            f"{best:,.0f} best ({args.repeat} runs x {args.batches - 1} batches; runs "
            f"{', '.join(f'{r[0]:,.0f}' for r in runs)}); retried batch {retry:,.0f} pairs/s"
        )
        for n in [int(w) for w in args.writers.split(",") if w]:
            wrate = await _repeat(args.repeat, bench_writers, url, n, args.batches, args.batch_size)
            print(
                f"{kind:11s} {n} writers     batch {args.batch_size}: {_runs(wrate)} "
                f"({args.repeat} runs x {n} x {args.batches - 1} batches)"
            )
        if args.http:
            hrate = await _repeat(args.repeat, bench_http, url, args.batches, args.batch_size)
            print(f"{kind:11s} POST /v1/pairs batch {args.batch_size}: {_runs(hrate)} (one client)")
            for n in [int(w) for w in args.http_workers.split(",") if w]:
                hrate = await _repeat(
                    args.repeat, bench_http_workers, url, n, args.batches, args.batch_size
                )
                print(
                    f"{kind:11s} POST /v1/pairs batch {args.batch_size}: {_runs(hrate)} "
                    f"({n} workers, {2 * n} clients)"
                )
        if args.summary:
            for total in (10**5, 10**6, 10**7):
                secs, n = await bench_summary(url, total)
                print(f"{kind:11s} summary of {n:>10,} pairs over 48 h: {secs * 1000:7.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
