"""Pairs and batches for the ingest benchmark, and the single-process store run."""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from comparator.store.store import Store

__all__ = ["RECENT", "T0", "bench_store", "encoded_batches", "make_pairs", "post_all"]

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


async def post_all(base: str, bodies: list[bytes], size: int) -> float:
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
