"""The data port's differential suite as a soak: seeded plans, direct vs proxied, for a while.

Runs the generator and the oracle of ``tests/proxy/test_differential.py`` (a raw-socket upstream
on 127.0.0.1, a fresh in-process proxy per plan on uvloop, its candidate a loopback server) on
consecutive seeds from ``--seed`` until ``--minutes`` have passed or ``--max-plans`` plans have
run, whichever comes first. Every failing seed is printed with its first problems and a one-line
replay; the end prints the counts. Exit status 1 when a plan failed with a problem not already
pinned by a known-bug test.

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
from collections import Counter
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.proxy.test_differential import (  # noqa: E402
    ALL_FEATURES,
    CI_FEATURES,
    PLAN_LIMIT_S,
    Plan,
    generate,
    replay_line,
    run_seed,
)

# Problems a known-bug test already pins (issue 16): counted apart, not a new finding. A problem
# matches when it contains every one of the strings.
KNOWN = {
    ("the proxy logged a traceback", "the client closed mid-body"): (
        "traceback on a mid-upload hang-up "
        "(test_a_client_hanging_up_mid_upload_is_not_a_server_error)"
    ),
}


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


def _pipelines_with_a_cut(plan: Plan) -> set[str]:
    """Keys of the exchanges on pipelined connections where production breaks off mid-body."""
    return {
        ex.key
        for conns in plan.clients
        for conn in conns
        if conn.pipelined and any(e.reply.cut_at is not None for e in conn.exchanges)
        for ex in conn.exchanges
    }


def _pipeline_cut(problem: str, keys: set[str]) -> str | None:
    if problem.split(" ", 1)[0] in keys and "through the proxy" in problem:
        return (
            "a broken answer destroys earlier pipelined ones "
            "(test_a_broken_answer_does_not_destroy_earlier_pipelined_answers)"
        )
    return None


def _late_stray(problem: str, late: bool) -> str | None:
    """With stray bytes a moment after a bodiless answer in the plan, the next request on that
    pooled connection gets them (or a 502, or misses the key's headers and body)."""
    if late and any(s in problem for s in ("POISON", "status 502", "protocol error", "headers [")):
        return (
            "late bytes after a bodiless answer "
            "(test_late_bytes_after_a_bodiless_answer_never_reach_the_next_request)"
        )
    return None


def _known(problem: str) -> str | None:
    for parts, name in KNOWN.items():
        if all(part in problem for part in parts):
            return name
    return None


async def soak(args: argparse.Namespace) -> int:
    features: frozenset[str] = args.features
    deadline = time.monotonic() + args.minutes * 60.0
    plans = exchanges = body_bytes = 0
    new_failures: list[int] = []
    known: Counter[str] = Counter()
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
        cut_pipelines = _pipelines_with_a_cut(plan)
        late = any(ex.reply.after_delay_s for ex in plan.exchanges)
        named = [
            (p, _known(p) or _pipeline_cut(p, cut_pipelines) or _late_stray(p, late))
            for p in problems
        ]
        unexplained = [p for p, name in named if name is None]
        for _, name in named:
            if name is not None:
                known[name] += 1
        if unexplained:
            new_failures.append(seed)
            print(f"FAIL seed {seed}: {len(unexplained)} problem(s)", flush=True)
            for p in unexplained[:5]:
                print(f"    {p[:300]}", flush=True)
            print(f"    replay: {replay_line(seed, features)}", flush=True)
        if time.monotonic() - last_report >= 30:
            last_report = time.monotonic()
            print(
                f"  {plans} plans, {exchanges} exchanges, {body_bytes / 2**20:.0f} MiB of bodies, "
                f"{len(new_failures)} failing",
                flush=True,
            )
        seed += 1
    print(
        f"done: {plans} plans (seeds {args.seed}..{seed - 1}), {exchanges} exchanges, "
        f"{body_bytes / 2**20:.0f} MiB of bodies each way; failing seeds with new problems: "
        f"{new_failures or 'none'}"
    )
    for name, count in known.most_common():
        print(f"known (issue 16, pinned by an xfail test): {count} × {name}")
    return 1 if new_failures else 0


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
