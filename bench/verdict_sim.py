"""Verdict rates through the real ingest path, with more runs than the CI suite takes.

    .venv/bin/python bench/verdict_sim.py [--aa-runs 25] [--runs 20] [--near]
    .venv/bin/python bench/verdict_sim.py --segments [--aa-runs 40] [--runs 40] [--hours 24]

Uses the generators and the loop of ``tests/comparator/test_simulations.py`` (wire-format pairs →
``Store.ingest`` into SQLite → a saved look every simulated hour, 100 pairs an hour, the simulation
policy there) and prints, for A/A (per task) and for each planted regression: runs, decisions, the
share REJECTed with the REJECT naming the check, and the median hour of the decision. ``--near``
plants each regression at about twice its margin instead (no A/A). ``--segments`` measures the
segment checks with the loop of ``tests/comparator/test_segments.py`` instead: A/A over 20 equal
tenants (1 000 pairs an hour, ``--hours`` of hourly looks) and a 15-point top-1 regression in one
tenant of 10% of traffic (500 pairs an hour, until REJECT or ``--hours``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comparator.judge.decision import Decision
from comparator.judge.policy import load_policy
from tests.comparator import test_simulations as sim

Plant = sim.Plant
#: About twice each margin (the CI suite's plants are further out).
NEAR = {
    "errors +2 pp (margin 1)": (Plant(cand_error=0.02), "error_delta"),
    "timeouts +2 pp (margin 1)": (Plant(cand_timeout=0.02), "timeout_delta"),
    "NaN in 1% (margin 0.5 pp)": (Plant(cand_invalid=0.01), "invalid_delta"),
    "top-1 moved in 10% (margin 5%)": (Plant(flip=0.1), "top1_disagreement"),
    "JS > 0.1 in 10% (margin 5%)": (Plant(js=0.1), "js_tail"),
    "shift 0.2 sd (margin 0.1)": (Plant(task="regression", bias=0.2), "reg_bias"),
    "10% embeddings replaced (margin 5%)": (Plant(task="embedding", drift=0.1), "emb_cosine_tail"),
    "candidate 1.3× slower (p95 margin 1.10)": (Plant(slow=1.3), "latency_p9"),
    "RSS +35 MiB/h (limit in 168 h: ~18)": (Plant(leak_mib_h=35.0), "memory_leak"),
    "10% not JSON (coverage 90%, margin 95%)": (Plant(unreadable=0.1), "coverage"),
}


async def _runs(
    tmp: Path, plant: sim.Plant, check: str | None, n: int, seed0: int
) -> list[sim.Run]:
    (tmp / "p.toml").write_text(sim.SIM_POLICY)
    policy = load_policy(tmp / "p.toml")
    store = await sim._store(tmp, plant.task)

    def stop(decision: Decision, why: str) -> bool:
        if check is None:
            return decision is not Decision.KEEP_OBSERVING
        return decision is Decision.PROMOTE or (decision is Decision.REJECT and check in why)

    try:
        out = []
        for seed in range(n):
            out.append(await sim.simulate(store, policy, f"e{seed}", plant, seed0 + seed, stop))
        return out
    finally:
        await store.close()


def _row(name: str, runs: list[sim.Run], check: str | None) -> str:
    rej = [r for r in runs if r.decision is Decision.REJECT]
    pro = [r for r in runs if r.decision is Decision.PROMOTE]
    named = [r for r in rej if check is not None and check in r.reasons]
    hours = [r.hour for r in (named if check else pro)] or [0]
    share = len(named) if check else len(rej)
    return (
        f"| {name} | {len(runs)} | {len(pro)} | {len(rej)} | "
        f"{share}/{len(runs)} ({100 * share / len(runs):.0f}%) | {statistics.median(hours):g} |"
    )


async def _segments(args: argparse.Namespace, d: Path) -> None:
    from comparator.judge.policy import load_policy as load
    from comparator.store.store import Store
    from tests.comparator import test_segments as seg

    (Path(d) / "seg.toml").write_text(seg.SEG_POLICY)
    policy = load(Path(d) / "seg.toml")
    store = await Store.open(
        f"sqlite:///{Path(d) / 'seg.sqlite'}", normalize_config=lambda n: seg.CONFIG
    )
    try:
        aa = [
            await seg._run(store, policy, f"aa{i}", 70_000 + i, args.hours, 1000, seg._tenant_20,
                           lambda dec, _: dec is Decision.REJECT)
            for i in range(args.aa_runs)
        ]  # fmt: skip
        rej = sum(r[0] is Decision.REJECT for r in aa)
        print(f"| A/A, 20 tenants, {args.hours} h | {len(aa)} | {rej} REJECT "
              f"({100 * rej / len(aa):.1f}%) | |", flush=True)  # fmt: skip
        bad = [
            await seg._run(store, policy, f"bad{i}", 80_000 + i, args.hours, 500,
                           seg._tenant_10pct, lambda dec, _: dec is not Decision.KEEP_OBSERVING,
                           flip_in="t0", flip=0.15)
            for i in range(args.runs)
        ]  # fmt: skip
        named = [r for r in bad if r[0] is Decision.REJECT and "in segment tenant=t0" in r[2]]
        hours = statistics.median([r[1] for r in named] or [0])
        print(f"| top-1 +15 pp in t0 (10% of traffic) | {len(bad)} | {len(named)} REJECT naming "
              f"tenant=t0 ({100 * len(named) / len(bad):.0f}%) | {hours:g} |", flush=True)  # fmt: skip
    finally:
        await store.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aa-runs", type=int, default=25, help="A/A runs per task")
    ap.add_argument("--runs", type=int, default=20, help="runs per planted regression")
    ap.add_argument("--near", action="store_true", help="regressions at about twice the margin")
    ap.add_argument("--segments", action="store_true", help="the segment checks' rates")
    ap.add_argument("--hours", type=int, default=24, help="--segments: hours of looks at most")
    args = ap.parse_args()
    if args.segments:
        print("| experiment | runs | result | median hour of the REJECT |\n|---|---:|---:|---:|")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            await _segments(args, Path(d))
        print(f"\n{time.perf_counter() - t0:.0f} s")
        return
    print("| experiment | runs | PROMOTE | REJECT | A/A: false REJECT; planted: REJECT naming the check "
          "| median hour (A/A: of PROMOTE) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tasks = () if args.near else ("classification", "regression", "embedding", "ranking")
        for i, task in enumerate(tasks):
            tmp = Path(d) / f"aa{i}"
            tmp.mkdir()
            runs = await _runs(tmp, sim.Plant(task=task), None, args.aa_runs, 50_000 + 1000 * i)
            print(_row(f"A/A {task}", runs, None), flush=True)
        plants = NEAR if args.near else sim.PLANTS
        for i, (name, (plant, check)) in enumerate(plants.items()):
            tmp = Path(d) / f"p{i}"
            tmp.mkdir()
            runs = await _runs(tmp, plant, check, args.runs, 60_000 + 1000 * i)
            print(_row(f"{name} → {check}", runs, check), flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    asyncio.run(main())
