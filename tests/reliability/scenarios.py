"""Load scenarios shared by the CI tests (short) and the ``bench/soak_*.py`` commands (five minutes).

Each scenario starts the fakes and a real ``shadowtee proxy`` process, drives loopback traffic at
a paced rate or a fixed concurrency, samples the proxy's gauges and ``/proc`` figures once a
second, and returns plain numbers; the caller decides what to assert or print.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.reliability.fakes import (
    FakeCandidate,
    FakeComparator,
    FakeProduction,
    LoopThread,
    ProxyProcess,
    free_port,
    infer_body,
    wait_until,
)

__all__ = ["LoadResult", "comparator_outage", "faulty_tees", "hung_candidate"]

RID = "X-Shadow-Request-Id"


@dataclass
class LoadResult:
    """What a scenario measured; ``samples`` is the once-a-second curve."""

    sent: int = 0
    ok: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    client_errors: int = 0
    rids: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("rids")
        return doc


def _sample(proxy: ProxyProcess, t0: float, phase: str) -> dict[str, Any]:
    gauges = proxy.gauges()
    return {
        "t_s": round(time.monotonic() - t0, 2),
        "phase": phase,
        "rss_mib": round(proxy.rss_bytes() / 2**20, 2),
        "fds": proxy.fds(),
        **{k: float(v) for k, v in gauges.items()},
    }


async def _drive(
    url: str,
    result: LoadResult,
    *,
    duration_s: float,
    rate: float | None,
    concurrency: int,
    path: Callable[[int], str],
    on_tick: Callable[[], None],
) -> None:
    """Paced (``rate`` req/s) or closed-loop (``concurrency`` workers) POSTs for ``duration_s``."""
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(i: int) -> None:
            result.sent += 1
            try:
                async with session.post(url + path(i), data=infer_body(i)) as resp:
                    await resp.read()
                    result.statuses[resp.status] = result.statuses.get(resp.status, 0) + 1
                    if resp.status == 200:
                        result.ok += 1
                        result.rids.append(resp.headers[RID])
            except (aiohttp.ClientError, TimeoutError):
                result.client_errors += 1

        loop = asyncio.get_running_loop()
        start = loop.time()
        next_tick = start + 1.0
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        if rate is not None:
            while (now := loop.time()) < start + duration_s:
                if now >= next_tick:
                    await loop.run_in_executor(None, on_tick)
                    next_tick += 1.0
                due = start + i / rate
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                task = asyncio.create_task(one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if tasks:
                await asyncio.wait(tasks, timeout=60)
            return

        counter = iter(range(10**9))

        async def worker() -> None:
            while loop.time() < start + duration_s:
                await one(next(counter))

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        while not all(w.done() for w in workers):
            await asyncio.sleep(min(1.0, max(0.0, next_tick - loop.time())))
            if loop.time() >= next_tick:
                await loop.run_in_executor(None, on_tick)
                next_tick += 1.0
        await asyncio.gather(*workers)


def comparator_outage(
    workdir: Path,
    *,
    outage_s: float,
    rate: float,
    max_spool_bytes: int,
    batch_size: int = 50,
    drain_limit_s: float = 120.0,
    log: Callable[[str], None] = lambda _: None,
) -> LoadResult:
    """The comparator is down for ``outage_s`` under ``rate`` req/s, then comes back.

    ``extra`` holds: delivered (pairs received), unique, spooled/replayed/dropped counters, the
    spool bound and the largest ``spool_bytes`` seen, and the seconds it took to drain.
    """
    lt = LoopThread()
    proxy: ProxyProcess | None = None
    try:
        prod, cand, comp = FakeProduction(lt), FakeCandidate(lt), FakeComparator()
        prod_url, cand_url = lt.serve(prod.app()), lt.serve(cand.app())
        comp_port = free_port()
        proxy = ProxyProcess(
            prod=prod_url,
            candidate=cand_url,
            comparator=f"http://127.0.0.1:{comp_port}",
            spool_dir=workdir / "spool",
            shadow_timeout_ms=2000,
            env={
                "SHADOWTEE_PROXY__MAX_SPOOL_BYTES": str(max_spool_bytes),
                "SHADOWTEE_PROXY__BATCH_SIZE": str(batch_size),
                "SHADOWTEE_PROXY__SHIP_RETRIES": "0",
                "SHADOWTEE_PROXY__SHIP_TIMEOUT_MS": "2000",
            },
        )
        result = LoadResult()
        t0 = time.monotonic()

        def tick() -> None:
            assert proxy is not None
            result.samples.append(_sample(proxy, t0, "outage"))
            log(f"  t={result.samples[-1]['t_s']:6.1f}s sent={result.sent} spool_bytes={result.samples[-1]['spool_bytes']:.0f}")  # fmt: skip

        asyncio.run(
            _drive(proxy.url, result, duration_s=outage_s, rate=rate, concurrency=64,
                   path=lambda _: "/v2/models/ok/infer", on_tick=tick)
        )  # fmt: skip
        wait_until(proxy.settled, "every pair complete", 30)
        result.samples.append(_sample(proxy, t0, "outage-end"))
        up_at = time.monotonic()
        lt.serve(comp.app(), port=comp_port)
        counters = proxy.status()["counters"]

        def drained() -> bool:
            assert proxy is not None
            g = proxy.gauges()
            return g["spool_pairs"] == 0 and g["ship_queue_pairs"] == 0

        wait_until(drained, "the spool replayed and the queue empty", drain_limit_s)
        drain_s = time.monotonic() - up_at
        result.samples.append(_sample(proxy, t0, "drained"))
        counters = proxy.status()["counters"]
        ids = comp.request_ids
        result.extra.update(
            delivered=len(ids),
            unique=len(set(ids)),
            unknown=len(set(ids) - set(result.rids)),
            pairs=counters["pairs"],
            max_spool_bytes_seen=max(s["spool_bytes"] for s in result.samples),
            max_spool_bytes=max_spool_bytes,
            drain_s=round(drain_s, 2),
            comparator_posts=comp.posts,
            metric_dropped_spool_full=proxy.metric(
                "shadowtee_proxy_pairs_dropped_total", reason="spool_full"
            ),
            accounting=proxy.status()["accounting"],
            metric_unaccounted=proxy.metrics().get(("shadowtee_proxy_pairs_unaccounted", ())),
        )
        result.extra["missing"] = len(set(result.rids) - set(ids))
        return result
    finally:
        if proxy is not None:
            proxy.stop()
        lt.close()


def hung_candidate(
    workdir: Path,
    *,
    duration_s: float,
    concurrency: int = 32,
    max_inflight: int = 64,
    shadow_timeout_ms: float = 250,
    log: Callable[[str], None] = lambda _: None,
) -> LoadResult:
    """A candidate that never answers, under ``concurrency`` closed-loop clients.

    ``samples`` is the RSS / fd / gauge curve, one point a second.
    """
    lt = LoopThread()
    proxy: ProxyProcess | None = None
    try:
        prod, cand, comp = FakeProduction(lt), FakeCandidate(lt), FakeComparator()
        prod_url, cand_url, comp_url = lt.serve(prod.app()), lt.serve(cand.app()), lt.serve(comp.app())  # fmt: skip
        proxy = ProxyProcess(
            prod=prod_url,
            candidate=cand_url,
            comparator=comp_url,
            spool_dir=workdir / "spool",
            shadow_timeout_ms=shadow_timeout_ms,
            max_inflight=max_inflight,
        )
        result = LoadResult()
        t0 = time.monotonic()

        def tick() -> None:
            assert proxy is not None
            s = _sample(proxy, t0, "load")
            result.samples.append(s)
            log(f"  t={s['t_s']:6.1f}s sent={result.sent} rss={s['rss_mib']:.1f} MiB fds={s['fds']} inflight={s['tee_inflight']:.0f} buffer={s['pairing_buffer_pairs']:.0f}")  # fmt: skip

        asyncio.run(
            _drive(proxy.url, result, duration_s=duration_s, rate=None, concurrency=concurrency,
                   path=lambda _: "/v2/models/hang/infer", on_tick=tick)
        )  # fmt: skip
        cand.gate.open()
        wait_until(proxy.settled, "in-flight calls finished after the candidate is released", 60)
        result.samples.append(_sample(proxy, t0, "released"))
        result.extra.update(
            max_inflight=max_inflight,
            concurrency=concurrency,
            counters=proxy.status()["counters"],
            pairs_received=len(comp.pairs),
        )
        return result
    finally:
        if proxy is not None:
            proxy.stop()
        lt.close()


def faulty_tees(
    workdir: Path,
    *,
    n: int,
    concurrency: int = 32,
    warmup: int = 500,
    modes: tuple[str, ...] = ("reset", "e500", "garbage", "swap", "hangheaders"),
) -> LoadResult:
    """``warmup`` then ``n`` requests whose tees all fail in rotating ways; figures before/after."""
    lt = LoopThread()
    proxy: ProxyProcess | None = None
    try:
        prod, cand, comp = FakeProduction(lt), FakeCandidate(lt), FakeComparator()
        prod_url, cand_url, comp_url = lt.serve(prod.app()), lt.serve(cand.app()), lt.serve(comp.app())  # fmt: skip
        proxy = ProxyProcess(
            prod=prod_url,
            candidate=cand_url,
            comparator=comp_url,
            spool_dir=workdir / "spool",
            shadow_timeout_ms=100,
            max_inflight=256,
            # Lingering candidate connections would keep fds open by design; release at once.
            env={"SHADOWTEE_PROXY__CANDIDATE_LINGER_MS": "0"},
        )
        t0 = time.monotonic()

        def path(i: int) -> str:
            return f"/v2/models/{modes[i % len(modes)]}/infer"

        def settle() -> None:
            assert proxy is not None
            wait_until(proxy.settled, "settled", 60)
            shipped = proxy
            wait_until(lambda: shipped.gauges()["ship_queue_pairs"] == 0, "queue shipped", 30)

        warm = LoadResult()
        asyncio.run(_count(proxy.url, warm, warmup, concurrency, path))
        settle()
        before = _sample(proxy, t0, "after-warmup")
        result = LoadResult()
        asyncio.run(_count(proxy.url, result, n, concurrency, path))
        settle()
        after = _sample(proxy, t0, "after")
        result.samples = [before, after]
        result.extra.update(
            counters=proxy.status()["counters"],
            pairs_received=len(comp.pairs),
            wall_s=round(time.monotonic() - t0, 1),
        )
        return result
    finally:
        if proxy is not None:
            proxy.stop()
        lt.close()


async def _count(
    url: str, result: LoadResult, n: int, concurrency: int, path: Callable[[int], str]
) -> None:
    """Exactly ``n`` POSTs over ``concurrency`` keep-alive connections."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)
    ) as session:
        counter = iter(range(n))

        async def worker() -> None:
            for i in counter:
                result.sent += 1
                try:
                    async with session.post(url + path(i), data=infer_body(i)) as resp:
                        await resp.read()
                        result.statuses[resp.status] = result.statuses.get(resp.status, 0) + 1
                        result.ok += resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    result.client_errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
