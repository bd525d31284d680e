"""The proxy benchmark: direct, nginx ``mirror``, a hand-written aiohttp tee and shadowtee, side by side.

Each proxy is measured with three candidates (healthy, 200 ms slow, hung) behind the same fake
production; ``direct`` is the client talking to production with no proxy at all. For every
(target, candidate) configuration, in every run, a fresh proxy process is started and measured:

1. **max throughput**: wrk, one thread, fixed connections, N seconds (after a short warm-up);
   the proxy's CPU-seconds over that window per 10k requests (``/proc/PID/stat``);
2. **latency at a fixed rate**: an open-loop paced generator (1,000 req/s by default), p50/p99
   measured from each request's scheduled send time; the candidate's received/completed counters,
   and for shadowtee its ``/metrics`` outcome counters and the fake comparator's pair count;
3. **peak RSS** of the proxy (VmHWM) after both phases.

Runs are interleaved (run 1 of every configuration, then run 2, ...) and the table shows medians.
wrk, the paced generator and the fake comparator (whose parsing of shadowtee's batches is no cost
of the proxy's) run on core 0; the proxy under test and the fake production and candidates on
core 1. Only 127.0.0.1 is used.

    .venv/bin/python bench/proxy_bench.py            # full: 3 runs, ~10 minutes on 2 cores
    .venv/bin/python bench/proxy_bench.py --quick    # 1 short run, ~2 minutes
    .venv/bin/python bench/proxy_bench.py --targets shadowtee --baseline REV   # this tree vs REV

``--rates 500,1000,2000,4000`` adds a latency ladder: each configuration is also loaded at each
rate (open loop, ``--rate-duration`` s each), and the table gives p50, p99, p99.9 and max with what
each proxy adds over direct access at that rate; the p99 curve is written as an SVG next to the
JSON.

``--baseline REV`` adds the target ``baseline``: the same ``shadowtee proxy`` command run from a
git worktree of REV (its packages first on ``PYTHONPATH``, the same virtual environment),
interleaved with this tree's runs, and prints this tree / REV for throughput, CPU and p99.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BENCH_DIR, LOAD_CORE, missing_tools, take_bench_lock
from measure import CANDIDATES, TARGETS, Bench, contaminated, measure_once, shadowtee_available
from report import ladder_svg, render_table, summarise

__all__ = ["main"]


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="1 run, 3 s phases (about 2 minutes)")
    p.add_argument(
        "--runs", type=int, help="interleaved runs per configuration (default 3; quick 1)"
    )
    p.add_argument(
        "--duration", type=float, help="wrk seconds per throughput phase (default 8; quick 3)"
    )
    p.add_argument("--warmup", type=float, help="wrk warm-up seconds, not measured (default 1)")
    p.add_argument("--rate", type=float, default=1000.0, help="fixed rate, req/s (default 1000)")
    p.add_argument(
        "--rate-duration", type=float, help="seconds at the fixed rate (default 6; quick 3)"
    )
    p.add_argument(
        "--rate-warmup", type=float, default=1.0, help="unmeasured s before --rate-duration"
    )
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument(
        "--max-inflight", type=int, default=512, help="shadowtee --max-inflight (default 512)"
    )
    p.add_argument(
        "--settle", type=float, default=4.0, help="max s to wait for shadowtee accounting"
    )
    p.add_argument(
        "--max-foreign",
        type=float,
        default=0.10,
        help="redo a measurement when other processes used more than this share of the server core",
    )
    p.add_argument(
        "--retries", type=int, default=1, help="redos of a disturbed measurement (default 1)"
    )
    p.add_argument(
        "--py-spy",
        action="store_true",
        help="sample the Python proxies with py-spy during wrk (perturbs them; for profiles only)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the benchmark, its children and its scheduler autogroup (e.g. -5 when "
        "other work shares the machine)",
    )
    p.add_argument(
        "--retry-budget",
        type=float,
        help="no more redos after this many seconds (default 240; quick 40), to stay bounded",
    )
    p.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}"
    )
    p.add_argument(
        "--candidates", default=",".join(CANDIDATES), help="comma list of healthy, slow, hung"
    )
    p.add_argument(
        "--rates",
        default="",
        metavar="R1,R2,...",
        help="also measure latency at each of these fixed rates (e.g. 500,1000,2000,4000): "
        "p50/p99/p99.9/max and what each adds over direct access, and an SVG plot",
    )
    p.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure shadowtee as of git revision REV (a worktree), side by side",
    )
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="where the JSON goes")
    args = p.parse_args(argv)
    quick = args.quick
    args.runs = args.runs or (1 if quick else 3)
    args.duration = args.duration or (3.0 if quick else 8.0)
    args.warmup = 1.0 if args.warmup is None else args.warmup
    args.rate_duration = args.rate_duration or (3.0 if quick else 6.0)
    args.retry_budget = args.retry_budget or (40.0 if quick else 240.0)
    try:
        args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        p.error(f"--rates: expected numbers separated by commas, got {args.rates!r}")
    if any(r <= 0 for r in args.rates):
        p.error("--rates: every rate must be positive")
    args.targets = [t for t in args.targets.split(",") if t]
    if args.baseline and "baseline" not in args.targets:
        args.targets.append("baseline")
    if "baseline" in args.targets and not args.baseline:
        p.error("--targets: baseline needs --baseline REV")
    args.candidates = [c for c in args.candidates.split(",") if c]
    for t in args.targets:
        if t not in TARGETS:
            p.error(f"--targets: unknown target {t!r} (choose from {', '.join(TARGETS)})")
    for c in args.candidates:
        if c not in CANDIDATES:
            p.error(f"--candidates: unknown candidate {c!r} (choose from {', '.join(CANDIDATES)})")
    if args.runs < 1 or args.duration <= 0 or args.rate <= 0 or args.rate_duration <= 0:
        p.error("--runs, --duration, --rate and --rate-duration must be positive")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # run the ``finally`` blocks: stop every child, free the lock


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if (os.cpu_count() or 1) < 2:
        print("proxy_bench: needs 2 CPU cores (load on core 0, servers on core 1)", file=sys.stderr)
        return 2
    needed = ["wrk", "taskset"] + (["nginx"] if "nginx" in args.targets else [])
    missing = missing_tools(needed)
    if missing:
        for name, hint in missing.items():
            print(f"proxy_bench: {name} is missing; install it with: {hint}", file=sys.stderr)
        if "nginx" in missing:
            print(
                "proxy_bench: or leave nginx out with --targets direct,handwritten,shadowtee",
                file=sys.stderr,
            )
        return 2
    notes: list[str] = []
    worktree: Path | None = None
    if args.baseline:
        worktree = Path(tempfile.mkdtemp(prefix="shadowtee-baseline-"))
        made = subprocess.run(
            ["git", "-C", str(BENCH_DIR.parent), "worktree", "add", "--detach", str(worktree),
             args.baseline],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if made.returncode != 0:
            print(f"proxy_bench: --baseline: {made.stderr.strip()}", file=sys.stderr)
            return 2
        args.baseline_dir = worktree
        rev = subprocess.run(
            ["git", "-C", str(worktree), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        notes.append(f"baseline = {args.baseline} ({rev}), run from {worktree}")
    try:
        return _run(args, argv, notes)
    finally:
        if worktree is not None:
            subprocess.run(
                ["git", "-C", str(BENCH_DIR.parent), "worktree", "remove", "--force", str(worktree)],
                capture_output=True, check=False,
            )  # fmt: skip


def _run(args: argparse.Namespace, argv: list[str] | None, notes: list[str]) -> int:
    if "shadowtee" in args.targets:
        ok, why = shadowtee_available()
        if not ok:
            notes.append(f"shadowtee left out: {why}")
            args.targets.remove("shadowtee")
    try:
        lock = take_bench_lock()
    except RuntimeError as exc:
        print(f"proxy_bench: {exc}", file=sys.stderr)
        return 2
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every child
        # With scheduler autogroups each terminal session competes as one group and a
        # process's own niceness only counts inside it; the group's niceness counts between.
        with contextlib.suppress(OSError):
            Path("/proc/self/autogroup").write_text(str(args.nice))
    os.sched_setaffinity(0, {LOAD_CORE})  # the orchestrator mostly sleeps; keep it off core 1
    configs = [(t, c) for t in args.targets for c in (["-"] if t == "direct" else args.candidates)]
    started = dt.datetime.now(dt.UTC)
    t_start = time.monotonic()
    runs: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="shadowtee-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.start_fakes()
            for run in range(args.runs):
                # Rotate the order each run so no configuration always goes first.
                order = configs[run % len(configs) :] + configs[: run % len(configs)]
                for target, cand in order:
                    for attempt in range(args.retries + 1):
                        res = measure_once(bench, target, cand, run)
                        res["attempt"] = attempt
                        print(_progress(res), file=sys.stderr, flush=True)
                        over_budget = time.monotonic() - t_start > args.retry_budget
                        if not contaminated(res, args.max_foreign) or over_budget:
                            break
                        if attempt < args.retries:
                            res["discarded"] = "other processes competed for the server core"
                            discarded.append(res)
                            time.sleep(2.0)
                    runs.append(res)
        finally:
            bench.procs.stop_all()
            lock.close()
    finished = dt.datetime.now(dt.UTC)
    summary = summarise(runs, configs)
    meta = {
        "command": " ".join([".venv/bin/python", "bench/proxy_bench.py", *(argv or sys.argv[1:])]),
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"
        },
        "notes": notes,
        "discarded_measurements": len(discarded),
    }
    print(render_table(summary, meta))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"proxy_bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(
        json.dumps(
            {"meta": meta, "summary": summary, "runs": runs, "discarded": discarded}, indent=2
        )
    )
    svg = ladder_svg(summary)
    if svg is not None:
        plot = path.with_suffix(".p99.svg")
        plot.write_text(svg)
        print(f"plot: {plot}")
    print(f"\nresults: {path}")
    return 0


def _progress(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"  run {res['run']} {res['target']:<11} {res['candidate']:<7} ERROR {res['error']}"
    return (
        f"  run {res['run']} {res['target']:<11} {res['candidate']:<7} "
        f"{res.get('rps', 0):8.0f} req/s  p99 {res.get('p99_ms', float('nan')):7.1f} ms  "
        f"({res['wall_s']} s)  foreign CPU {res.get('foreign_cpu_share', 0.0):.0%}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
