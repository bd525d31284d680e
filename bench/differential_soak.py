"""The data port's differential suite as a soak: seeded plans, direct vs proxied, for a while.

Runs the generator and the oracle of ``tests/proxy/test_differential.py`` (a raw-socket upstream
on 127.0.0.1, a fresh in-process proxy per plan on uvloop, its candidate a loopback server) on
consecutive seeds from ``--seed`` until ``--minutes`` have passed or ``--max-plans`` plans have
run, whichever comes first. Every failing seed is printed with its first problems and a one-line
replay; the end prints the counts. Exit status 1 when a plan failed.

    .venv/bin/python bench/differential_soak.py --minutes 10
    .venv/bin/python bench/differential_soak.py --minutes 1 --features ci --seed 5000
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.proxy.test_differential import (  # noqa: E402
    ALL_FEATURES,
    CI_FEATURES,
    PLAN_LIMIT_S,
    generate,
    replay_line,
    run_seed,
)


def _features(text: str) -> frozenset[str]:
    if text == "all":
        return ALL_FEATURES
    if text == "ci":
        return CI_FEATURES
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = names - ALL_FEATURES
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown features {sorted(unknown)}")
    return names


async def soak(args: argparse.Namespace) -> int:
    features: frozenset[str] = args.features
    deadline = time.monotonic() + args.minutes * 60.0
    plans = exchanges = body_bytes = 0
    failures: list[int] = []
    last_report = time.monotonic()
    seed = args.seed
    print(
        f"soak: seeds from {seed}, features {','.join(sorted(features))}, "
        f"{args.minutes:g} min or {args.max_plans} plans",
        flush=True,
    )
    while time.monotonic() < deadline and plans < args.max_plans:
        plan = generate(seed, features)
        async with asyncio.timeout(2 * PLAN_LIMIT_S + 30):
            problems = await run_seed(seed, features)
        plans += 1
        exchanges += len(plan.exchanges)
        body_bytes += sum(len(ex.body) + len(ex.reply.body) for ex in plan.exchanges)
        if problems:
            failures.append(seed)
            print(f"FAIL seed {seed}: {len(problems)} problem(s)", flush=True)
            for p in problems[:5]:
                print(f"    {p[:300]}", flush=True)
            print(f"    replay: {replay_line(seed, features)}", flush=True)
        if time.monotonic() - last_report >= 30:
            last_report = time.monotonic()
            print(
                f"  {plans} plans, {exchanges} exchanges, {body_bytes / 2**20:.0f} MiB of bodies, "
                f"{len(failures)} failing",
                flush=True,
            )
        seed += 1
    print(
        f"done: {plans} plans (seeds {args.seed}..{seed - 1}), {exchanges} exchanges, "
        f"{body_bytes / 2**20:.0f} MiB of bodies each way; failing seeds: "
        f"{failures or 'none'}"
    )
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--max-plans", type=int, default=1_000_000, help="at most this many plans")
    parser.add_argument(
        "--seed", type=int, default=None, help="first seed (default: random, printed)"
    )
    parser.add_argument(
        "--features",
        type=_features,
        default=ALL_FEATURES,
        help="all (default), ci, or a comma-separated list of generator features",
    )
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1_000_000, 2**31)
    # The proxy's log is not printed (a warning per start: no comparator); what it logs with a
    # traceback is a problem the oracle reports with its seed.
    logging.basicConfig(level=logging.ERROR, handlers=[logging.NullHandler()])
    return uvloop.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
