"""Soak: a candidate that never answers, under sustained load, for five minutes.

A real ``shadowtee proxy`` process between loopback fakes; the candidate accepts every call and
never replies. ``--concurrency`` closed-loop clients send requests for ``--duration-s``. Once a
second the proxy's RSS, open fds, in-flight tees, pairing buffer and ship queue are sampled; the
curve is printed (every ``--print-every`` seconds) and written with a summary to
``bench/results/soak_hung_candidate-<UTC>.json``. The proxy's client-side throughput is printed too.

    .venv/bin/python bench/soak_hung_candidate.py                     # five minutes
    .venv/bin/python bench/soak_hung_candidate.py --duration-s 30     # a quick look

The CI version is ``tests/reliability/test_memory_bound.py`` (16 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability.scenarios import hung_candidate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=300.0, help="load length (300)")
    parser.add_argument("--concurrency", type=int, default=32, help="client connections (32)")
    parser.add_argument("--max-inflight", type=int, default=64, help="proxy tee bound (64)")
    parser.add_argument("--shadow-timeout-ms", type=float, default=250.0, help="(250)")
    parser.add_argument("--print-every", type=int, default=10, help="curve step in seconds (10)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    started = datetime.now(UTC)
    print(f"hung candidate soak: {args.duration_s:g} s, {args.concurrency} clients, "
          f"max_inflight {args.max_inflight} ({os.cpu_count()} cores)", flush=True)  # fmt: skip
    t0 = time.monotonic()
    printed = [0]

    def log(line: str) -> None:
        printed[0] += 1
        if printed[0] % args.print_every == 1 or args.print_every == 1:
            print(line, flush=True)

    with tempfile.TemporaryDirectory(prefix="soak-hung-") as tmp:
        result = hung_candidate(
            Path(tmp),
            duration_s=args.duration_s,
            concurrency=args.concurrency,
            max_inflight=args.max_inflight,
            shadow_timeout_ms=args.shadow_timeout_ms,
            log=log,
        )
    load = [s for s in result.samples if s["phase"] == "load"]
    rss = [s["rss_mib"] for s in load]
    warm = rss[len(rss) // 10 :] or rss
    half = len(warm) // 2
    growth = max(warm[half:]) - max(warm[:half]) if half else 0.0
    summary = {
        "bench": "soak_hung_candidate",
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_s": round(time.monotonic() - t0, 1),
        "requests_per_s": round(result.sent / args.duration_s, 1),
        "rss_mib": {"min": min(rss), "max": max(rss), "last": rss[-1],
                    "second_half_minus_first_half_max": round(growth, 2)},
        "max_tee_inflight": max(s["tee_inflight"] for s in load),
        "max_pairing_buffer": max(s["pairing_buffer_pairs"] for s in load),
        "max_ship_queue": max(s["ship_queue_pairs"] for s in load),
        "max_fds": max(s["fds"] for s in load),
        **result.to_json(),
    }  # fmt: skip
    c = result.extra["counters"]
    print(f"sent {result.sent} ({summary['requests_per_s']} req/s), statuses {result.statuses}, "
          f"client errors {result.client_errors}")  # fmt: skip
    print(f"candidate outcomes {c['candidate_outcomes']}")
    print(f"RSS MiB min {min(rss)} max {max(rss)} last {rss[-1]}; growth second half vs first "
          f"(after the first 10%): {growth:+.2f} MiB")  # fmt: skip
    print(f"max in-flight {summary['max_tee_inflight']:.0f} (bound {args.max_inflight}), max "
          f"pairing buffer {summary['max_pairing_buffer']:.0f}, max ship queue "
          f"{summary['max_ship_queue']:.0f}, max fds {summary['max_fds']}")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak_hung_candidate-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {path}")
    bounded = summary["max_tee_inflight"] <= args.max_inflight
    return 0 if bounded else 1


if __name__ == "__main__":
    raise SystemExit(main())
