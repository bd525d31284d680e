"""Soak: the comparator is down for five minutes under steady traffic, then comes back.

A real ``shadowtee proxy`` process between loopback fakes (production, candidate, comparator),
paced client traffic at ``--rate`` req/s while the comparator port refuses connections, then the
comparator starts and the spool drains. Printed and written to
``bench/results/soak_comparator_outage-<UTC>.json``: requests sent, pairs delivered (and unique),
pairs missing, spooled/replayed/dropped counters, the largest spool seen against its bound, the
drain time, and the once-a-second curve of spool bytes.

    .venv/bin/python bench/soak_comparator_outage.py                  # five minutes, 100 req/s
    .venv/bin/python bench/soak_comparator_outage.py --outage-s 30    # the CI-sized run

The CI version is ``tests/reliability/test_comparator_outage.py`` (8 s each, two spool bounds).
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

from tests.reliability.scenarios import comparator_outage  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage-s", type=float, default=300.0, help="outage length (300)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (100)")
    parser.add_argument(
        "--max-spool-bytes", type=int, default=64 * 2**20, help="spool bound (64 MiB)"
    )
    parser.add_argument("--batch-size", type=int, default=200, help="pairs per batch (200)")
    parser.add_argument("--print-every", type=int, default=10, help="curve step in seconds (10)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    printed = [0]

    def log(line: str) -> None:
        printed[0] += 1
        if printed[0] % args.print_every == 1 or args.print_every == 1:
            print(line, flush=True)

    started = datetime.now(UTC)
    print(f"comparator outage soak: {args.outage_s:g} s at {args.rate:g} req/s, spool bound "
          f"{args.max_spool_bytes} bytes ({os.cpu_count()} cores)", flush=True)  # fmt: skip
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soak-outage-") as tmp:
        result = comparator_outage(
            Path(tmp),
            outage_s=args.outage_s,
            rate=args.rate,
            max_spool_bytes=args.max_spool_bytes,
            batch_size=args.batch_size,
            drain_limit_s=600.0,
            log=log,
        )
    x = result.extra
    dropped = sum(x["pairs"]["dropped"].values())
    ok = (
        x["delivered"] == x["unique"]
        and x["unknown"] == 0
        and x["delivered"] + dropped == result.ok
        and x["max_spool_bytes_seen"] <= x["max_spool_bytes"]
    )
    summary = {
        "bench": "soak_comparator_outage",
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_s": round(time.monotonic() - t0, 1),
        "every_pair_accounted_for": ok,
        **result.to_json(),
    }
    print(f"sent {result.sent}, answered 200: {result.ok}, client errors {result.client_errors}")
    print(f"pairs delivered {x['delivered']} (unique {x['unique']}), missing {x['missing']}, "
          f"dropped {dropped} {x['pairs']['dropped']}")  # fmt: skip
    print(f"spooled {x['pairs']['spooled']}, replayed {x['pairs']['replayed']}, "
          f"largest spool {x['max_spool_bytes_seen']:.0f} of {x['max_spool_bytes']} bytes, "
          f"drained in {x['drain_s']} s")  # fmt: skip
    print("every pair accounted for:", ok)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak_comparator_outage-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
