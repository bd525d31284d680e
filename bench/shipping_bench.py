"""Pairs/s shipped by the proxy's shipper and stored by the real comparator, by answer size.

The proxy's :class:`~proxy.shipper.Shipper` (size-aware batches, bodies checked and spliced as the
proxy does) posts to ``POST /v1/pairs`` of the comparator's own app (``create_app``: parse,
screen pair by pair, store) on 127.0.0.1, on the database given. Each pair carries an OIP answer
of about ``--sizes`` bytes on both sides (a float vector). Timed from the first pair queued to the
last one stored; one process for both, as in a one-core sidecar and a one-core comparator sharing
the machine (so the numbers are a floor for each).

    .venv/bin/python bench/shipping_bench.py --db sqlite:////tmp/ship.db \
        --db postgresql://postgres@127.0.0.1:5432/postgres --sizes 1000 50000 500000

Prints one line per database and size: pairs/s, MB/s of answers, batches and 413s seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from comparator.app import create_app
from comparator.routes import STORE
from comparator.settings import ComparatorSettings
from contract.outcomes import Outcome
from proxy.metrics import ProxyStats
from proxy.pairing import CompletedPair, Side
from proxy.shipper import Shipper
from proxy.spool import Spool


def answer(size: int, rng: random.Random) -> bytes:
    """An OIP v2 answer of about ``size`` bytes: one FP32 output of random floats."""
    n = max(1, size // 20)
    data = [round(rng.random(), 12) for _ in range(n)]
    doc = {"model_name": "m", "outputs": [{"name": "y", "shape": [1, n], "datatype": "FP32"}]}
    doc["outputs"][0]["data"] = data
    return json.dumps(doc).encode()


def pairs(n: int, size: int, seed: int) -> list[CompletedPair]:
    rng = random.Random(seed)
    bodies = [answer(size, rng) for _ in range(8)]  # a few distinct answers, reused
    now = time.time()
    out = []
    for i in range(n):
        out.append(
            CompletedPair(
                request_id=f"b{i}-{uuid.uuid4().hex[:8]}",
                ts=now + i * 1e-3,
                route="/v2/models/m/infer",
                request_sha256=f"{i:064x}",
                request_body=None,
                prod=Side(Outcome.OK, 200, 3.0, "1", bodies[i % 8], len(bodies[i % 8])),
                candidate=Side(Outcome.OK, 200, 4.0, "2", bodies[(i + 1) % 8]),
            )
        )
    return out


async def run(db: str, size: int, n: int, spool_dir: str) -> dict[str, Any]:
    settings = ComparatorSettings(db=db, token=SecretStr("bench"))
    app = create_app(settings, CollectorRegistry())
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    exp = f"ship-{uuid.uuid4().hex[:10]}"
    stats = ProxyStats()
    todo = pairs(n, size, seed=size)
    try:
        async with aiohttp.ClientSession() as session:
            shipper = Shipper(
                session=session,
                comparator_url=f"http://127.0.0.1:{port}",
                token="bench",
                experiment=exp,
                spool=Spool(f"{spool_dir}/{exp}", 1 << 30),
                stats=stats,
                batch_size=500,
                flush_interval_s=1.0,
                timeout_s=60.0,
                retries=3,
                backoff_s=0.05,
                max_queue=1_000_000,
                max_body_bytes=1024 * 1024,
            )
            started = time.perf_counter()
            for p in todo:
                shipper.enqueue(p)
            await shipper.ship_pending(retries=3)
            elapsed = time.perf_counter() - started
        store = app[STORE]
        stored = (await store.get_experiment(exp)).n_pairs  # type: ignore[union-attr]
    finally:
        await runner.cleanup()
    answer_bytes = sum(len(p.prod.body or b"") + len(p.candidate.body or b"") for p in todo)
    return {
        "pairs": n,
        "stored": stored,
        "delivered": stats.pairs_delivered,
        "dropped": sum(stats.dropped.values()),
        "seconds": elapsed,
        "pairs_per_s": n / elapsed,
        "mb_per_s": answer_bytes / elapsed / 1e6,
        "batch_limit": shipper.batch_limit,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", action="append", required=True, help="database URL (repeatable)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 50_000, 500_000])
    ap.add_argument("--bytes", type=int, default=100_000_000, help="answer bytes per run, about")
    ap.add_argument("--max-pairs", type=int, default=5000)
    ap.add_argument("--spool-dir", default="/tmp/shadowtee-ship-bench")
    args = ap.parse_args()
    for db in args.db:
        kind = db.split(":", 1)[0]
        for size in args.sizes:
            n = max(20, min(args.max_pairs, args.bytes // (2 * size)))
            r = asyncio.run(run(db, size, n, args.spool_dir))
            print(
                f"{kind:10s} answers {size / 1000:6.0f} KB: {r['pairs_per_s']:8.0f} pairs/s "
                f"{r['mb_per_s']:6.1f} MB/s of answers  ({r['pairs']} pairs in "
                f"{r['seconds']:.2f} s; stored {r['stored']}, dropped {r['dropped']})",
                flush=True,
            )


if __name__ == "__main__":
    main()
