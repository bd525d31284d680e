"""An open-loop, fixed-rate HTTP load generator (wrk has no fixed-rate mode).

Requests are scheduled at ``t0 + i / rate`` whether or not earlier ones have finished, so a proxy
that stalls cannot slow the generator down and hide its own latency (coordinated omission).
Latency is measured from the *scheduled* send time to the last byte of the response. Every request
has a total timeout; a request that fails or times out counts as taking the timeout in the
percentiles, so p99 never looks better because requests were lost.

The first ``--warmup`` seconds (default 1) are sent at the same rate but left out of the
percentiles, so connection set-up at the start does not count as the proxy's latency.

Bounded: ``rate * (warmup + duration)`` requests at most, and it returns at most ``--timeout`` seconds after the
last one was scheduled. Prints one JSON object on stdout.

Usage: ``python bench/paced_load.py --url URL --rate 1000 --duration 8 [--timeout 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp
import numpy as np

__all__ = ["main", "run_paced"]

REQUEST_BODY = json.dumps(
    {
        "id": "bench",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64},
        ],
    },
    separators=(",", ":"),
).encode()


async def run_paced(
    url: str, rate: float, duration: float, timeout_s: float, warmup: float = 0.0
) -> dict[str, Any]:
    skip = int(rate * warmup)  # warm-up requests: sent at the same rate, not in the percentiles
    total = skip + max(1, int(rate * duration))
    latencies = np.full(total, np.nan)
    statuses: dict[str, int] = {}
    failed = {"timeout": 0, "error": 0}
    connector = aiohttp.TCPConnector(limit=1024, limit_per_host=1024, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout_s)
    headers = {"Content-Type": "application/json"}

    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

        async def one(i: int, scheduled: float) -> None:
            measured = i >= skip
            try:
                async with session.post(url, data=REQUEST_BODY, headers=headers) as resp:
                    await resp.read()
                    key = str(resp.status)
                    if measured:
                        statuses[key] = statuses.get(key, 0) + 1
                latencies[i] = time.perf_counter() - scheduled
            except TimeoutError:
                failed["timeout"] += measured
            except (aiohttp.ClientError, OSError):
                failed["error"] += measured

        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        i = 0
        while i < total:
            now = time.perf_counter()
            due = min(total, int((now - start) * rate) + 1)
            while i < due:
                task = asyncio.create_task(one(i, start + i / rate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            # Sleep to the next scheduled send; ~1 ms granularity is plenty at 1,000 req/s.
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        sent_s = time.perf_counter() - start
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s + 1.0)
        for task in list(tasks):  # only reachable if a request outlived its own timeout
            task.cancel()

    latencies = latencies[skip:]
    done = latencies[~np.isnan(latencies)]
    # Lost requests count as the timeout, so they push the percentiles up instead of vanishing.
    censored = np.where(np.isnan(latencies), timeout_s, latencies) * 1000.0
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    return {
        "rate": rate,
        "duration_s": duration,
        "warmup_s": warmup,
        "sent_total": total,
        "scheduled": total - skip,
        "send_span_s": round(sent_s, 3),
        "completed": int(done.size),
        "ok": ok,
        "statuses": statuses,
        "timeouts": failed["timeout"],
        "errors": failed["error"],
        "p50_ms": float(np.percentile(censored, 50)),
        "p99_ms": float(np.percentile(censored, 99)),
        "p999_ms": float(np.percentile(censored, 99.9)),
        "max_ms": float(censored.max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="open-loop fixed-rate POST load generator")
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of sending")
    parser.add_argument("--timeout", type=float, default=2.0, help="per-request total timeout, s")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds sent first, not measured"
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.timeout <= 0 or args.warmup < 0:
        parser.error("--rate, --duration and --timeout must be positive, --warmup not negative")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    result = asyncio.run(run_paced(args.url, args.rate, args.duration, args.timeout, args.warmup))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
