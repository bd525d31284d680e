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
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ingest_bench_support import bench_store, encoded_batches, post_all
from ingest_fill import bench_summary, fill_pairs, fresh_database, pair_bytes

from comparator.app import GC_THRESHOLDS, tune_gc
from comparator.store.store import Store

T = TypeVar("T")


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
        return await post_all(base, bodies, size)
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
