"""``shadowtee demo``: the whole loop on this machine, with real models and real processes.

What it runs, each a ``shadowtee`` subprocess on a free loopback port, logs under ``DIR/logs``::

    traffic ──▶ proxy ──▶ serve (v1, production)
                  └─tee─▶ serve (v2 good | v3 bad candidate)
                  └─pairs─▶ comparator ──▶ DIR/shadowtee.sqlite

then the verdict (demo policy) and the report (``DIR/report.{html,json,md}``).

The order of a run: start the four processes and wait until each answers its ready URL; send the
digits test split through the proxy (bounded concurrency, a progress bar on stderr); stop the
proxy, whose shutdown flushes its last pairs; wait until the comparator holds every pair; wait
until the demo policy's (shortened) window has elapsed since the first pair; judge; write the
report. Every process is stopped in ``finally`` — also on Ctrl-C, SIGTERM and any failure.

The demo policy judges a window of seconds instead of 24 hours. Its verdict shows the method,
not a decision anyone should act on, and the output says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shadowtee.supervise import Child, Supervisor, free_port, shadowtee_argv
from shadowtee.traffic import MODEL_NAME, digits_requests, drive, parity_headers

__all__ = ["CANDIDATES", "DemoError", "DemoOptions", "run_demo"]

REPO = Path(__file__).resolve().parent.parent

ROUTE = f"/v2/models/{MODEL_NAME}/infer"
CANDIDATES = {"good": "2", "bad": "3"}
READY_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 30.0
EXIT_CODES = {"PROMOTE": 0, "REJECT": 1, "KEEP_OBSERVING": 3}


class DemoError(Exception):
    """The demo could not finish; ``str()`` says which step and why."""


@dataclass(frozen=True)
class DemoOptions:
    out: Path
    candidate: str = "good"
    requests: int = 2000
    concurrency: int = 4
    rate: float = 100.0
    models: Path = REPO / "models"
    policy: Path = REPO / "comparator" / "judge" / "demo_policy.toml"
    shadow_timeout_ms: float = 2000.0

    @property
    def experiment(self) -> str:
        return f"digits-v1-vs-v{CANDIDATES[self.candidate]}"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{(self.out / 'shadowtee.sqlite').resolve()}"


# -- the comparator's view --------------------------------------------------------------------


def stored_pairs(comparator: str, experiment: str) -> int | None:
    """Pairs the comparator holds for ``experiment`` (``None`` if it does not answer)."""
    try:
        with urllib.request.urlopen(f"{comparator}/v1/experiments", timeout=2.0) as resp:
            doc = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    rows = doc.get("experiments", []) if isinstance(doc, dict) else doc
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and row.get("name") == experiment:
            return int(row.get("n_pairs", 0))
    return 0


def wait_for_pairs(comparator: str, experiment: str, expected: int, timeout_s: float) -> int:
    """Poll until the comparator holds ``expected`` pairs or the count stops growing."""
    deadline = time.monotonic() + timeout_s
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = stored_pairs(comparator, experiment) or 0
        if n >= expected:
            return n
        if n != last:
            last, last_change = n, time.monotonic()
        elif time.monotonic() - last_change > 5.0:
            break  # nothing new for 5 s: the rest is not coming
        time.sleep(0.25)
    return max(last, 0)


# -- verdict and report -----------------------------------------------------------------------


def window_seconds(policy: Path) -> float:
    with open(policy, "rb") as f:
        doc = tomllib.load(f)
    return float(doc.get("window", {}).get("min_hours", 24)) * 3600.0


async def judge_and_report(opts: DemoOptions) -> dict[str, Any]:
    """Judge with the demo policy (once its window has elapsed), write the report, sum up."""
    from comparator.judge.policy import load_policy
    from comparator.judge.verdict import judge
    from comparator.measure.aggregates import Aggregate
    from comparator.store.store import Store
    from reports import ReportError, write_report
    from reports.facts import key_numbers

    store = await Store.open(opts.db_url, upgrade=False)  # the comparator migrated it
    try:
        info = await store.get_experiment(opts.experiment)
        if info is None or info.n_pairs == 0:
            raise DemoError(f"the comparator stored no pairs for {opts.experiment}")
        policy = load_policy(opts.policy)
        window = window_seconds(opts.policy)
        # A first look right away: a critical FAIL rejects early, as in a real experiment.
        verdict = await judge(store, opts.experiment, policy)
        wait = (info.started_at + timedelta(seconds=window) - datetime.now(UTC)).total_seconds()
        if _decision(verdict.decision) != "REJECT" and wait > 0:
            say(f"demo policy: waiting {wait:.0f} s until its {window:.0f} s window has elapsed")
            await asyncio.sleep(wait + 0.5)
            verdict = await judge(store, opts.experiment, policy)
        total = Aggregate.merged(a for _, a in await store.hourly_aggregates(opts.experiment))
        try:
            paths = await write_report(
                store, opts.experiment, verdict.at.date(), opts.out, policy=opts.policy
            )
        except ReportError as exc:
            raise DemoError(f"writing the report: {exc}") from None
    finally:
        await store.close()
    parity = total.segments.get("parity", {})
    return {
        "verdict": verdict.to_json(),
        "decision": _decision(verdict.decision),
        "segments": {
            "parity": {
                value: {
                    "pairs": seg.count("pairs"),
                    "n": seg.count("cls.n"),
                    "agree": seg.count("cls.agree"),
                }
                for value, seg in sorted(parity.items())
            }
        },
        "window_seconds": window,
        "numbers": key_numbers(total),
        "classification": {"n": total.count("cls.n"), "agree": total.count("cls.agree")},
        "report": {"html": str(paths.html), "json": str(paths.json), "md": str(paths.markdown)},
    }


def _decision(value: Any) -> str:
    return str(getattr(value, "name", value)).upper()


# -- the run ----------------------------------------------------------------------------------


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the demo like Ctrl-C does: through ``finally``, children included."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _launchers(opts: DemoOptions) -> dict[str, Any]:
    models = opts.models / MODEL_NAME
    ports: dict[str, int] = {}

    def serve(version: str, role: str) -> Any:
        def launch() -> tuple[list[str], str, dict[str, int]]:
            ports[role] = port = free_port()
            argv = shadowtee_argv(
                "serve",
                "--model",
                str(models / version / "model.onnx"),
                "--name",
                MODEL_NAME,
                "--version",
                version,
                "--listen",
                f"127.0.0.1:{port}",
                "--device",
                "cpu",
            )
            return argv, f"http://127.0.0.1:{port}/v2/health/ready", {"listen": port}

        return launch

    def comparator() -> tuple[list[str], str, dict[str, int]]:
        ports["comparator"] = port = free_port()
        argv = shadowtee_argv(
            "comparator",
            "--listen",
            f"127.0.0.1:{port}",
            "--db",
            opts.db_url,
            "--policy",
            str(opts.policy),
            "--scrape",
            f"prod=http://127.0.0.1:{ports['prod']}/metrics",
            "--scrape",
            f"candidate=http://127.0.0.1:{ports['candidate']}/metrics",
            "--scrape-experiment",
            opts.experiment,
        )
        return argv, f"http://127.0.0.1:{port}/health/ready", {"listen": port}

    def proxy() -> tuple[list[str], str, dict[str, int]]:
        ports["proxy"], admin = free_port(), free_port()
        argv = shadowtee_argv(
            "proxy",
            "--listen",
            f"127.0.0.1:{ports['proxy']}",
            "--prod",
            f"http://127.0.0.1:{ports['prod']}",
            "--candidate",
            f"http://127.0.0.1:{ports['candidate']}",
            "--comparator",
            f"http://127.0.0.1:{ports['comparator']}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            "--experiment",
            opts.experiment,
            "--shadow-timeout-ms",
            f"{opts.shadow_timeout_ms:g}",
        )
        return (
            argv,
            f"http://127.0.0.1:{admin}/health/ready",
            {"listen": ports["proxy"], "admin": admin},
        )

    return {
        "prod": serve("1", "prod"),
        "candidate": serve(CANDIDATES[opts.candidate], "candidate"),
        "comparator": comparator,
        "proxy": proxy,
    }


def _child_env(opts: DemoOptions) -> dict[str, str]:
    """Settings the CLI flags do not cover, passed the documented way: environment variables."""
    return {
        "SHADOWTEE_PROXY__SPOOL_DIR": str((opts.out / "spool").resolve()),
        # Bodies travel and are kept, so the report can show the most divergent examples.
        "SHADOWTEE_PROXY__INCLUDE_REQUEST_BODY": "true",
        "SHADOWTEE_COMPARATOR__STORE_REQUEST_BODIES": "true",
        "SHADOWTEE_COMPARATOR__SCRAPE_INTERVAL_S": "2",
        # The segment of the demo: the digit's parity, which the load driver sends with each
        # request as X-Digit-Parity; the verdict checks each parity, the report shows both.
        "SHADOWTEE_PROXY__SEGMENT_HEADERS": json.dumps({"parity": "X-Digit-Parity"}),
    }


def run_demo(opts: DemoOptions) -> int:
    """Run the demo; returns the verdict's exit code. Raises :class:`DemoError` on failure."""
    if opts.candidate not in CANDIDATES:
        raise DemoError(f"--candidate: expected one of {', '.join(CANDIDATES)}")
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "logs").mkdir(exist_ok=True)
    db_file = opts.out / "shadowtee.sqlite"
    for stale in (
        db_file,
        db_file.with_name(db_file.name + "-wal"),
        db_file.with_name(db_file.name + "-shm"),
    ):
        stale.unlink(missing_ok=True)  # a demo judges its own run, not the last one's
    shutil.rmtree(opts.out / "spool", ignore_errors=True)  # nor replays the last one's pairs
    bodies, source = digits_requests(opts.models)
    sup = Supervisor(opts.out / "logs", env=_child_env(opts))
    launch = _launchers(opts)
    summary: dict[str, Any] = {
        "experiment": opts.experiment,
        "candidate": opts.candidate,
        "processes": {},
    }
    started = time.monotonic()
    timings: dict[str, float] = {}
    summary["timings_s"] = timings

    def mark(phase: str) -> None:
        timings[phase] = round(time.monotonic() - started - sum(timings.values()), 1)

    say(
        f"shadowtee demo: production v1 vs {opts.candidate} candidate "
        f"v{CANDIDATES[opts.candidate]}, {opts.requests} requests, output in {opts.out}"
    )
    with _sigterm_as_interrupt():
        try:
            children: dict[str, Child] = {}
            # The servers first: the comparator and the proxy are given their ports.
            for name in ("prod", "candidate", "comparator", "proxy"):
                children[name] = sup.start(name, launch[name])
                if name == "candidate":
                    sup.wait_ready([children["prod"], children["candidate"]], READY_TIMEOUT_S)
            sup.wait_ready(list(children.values()), READY_TIMEOUT_S)
            for name, child in children.items():
                summary["processes"][name] = {"pid": child.pid, "ports": child.ports}
                say(f"  {name:<10} pid {child.pid:<7} {child.ready_url.rsplit('/', 2)[0]}")
            _write_summary(opts, summary)  # PIDs on disk early, for whoever checks cleanup
            say(f"ready in {time.monotonic() - started:.1f} s; sending {source}")

            mark("start-up")
            proxy_url = f"http://127.0.0.1:{children['proxy'].ports['listen']}{ROUTE}"
            statuses = asyncio.run(
                drive(
                    proxy_url,
                    bodies,
                    opts.requests,
                    opts.concurrency,
                    opts.rate,
                    headers=parity_headers(bodies),
                )
            )
            summary["responses"] = statuses
            if statuses.get("200", 0) != opts.requests:
                say(f"warning: not every response was 200: {statuses}")

            mark("traffic")
            # Stopping the proxy flushes its last pairs; then the comparator must hold them all.
            code = sup.stop(children["proxy"], grace_s=DRAIN_TIMEOUT_S)
            if code not in (0, None):
                say(
                    f"warning: the proxy exited with code {code} (see {children['proxy'].log_path})"
                )
            comparator = f"http://127.0.0.1:{children['comparator'].ports['listen']}"
            stored = wait_for_pairs(comparator, opts.experiment, opts.requests, DRAIN_TIMEOUT_S)
            summary["pairs_stored"] = stored
            if stored < opts.requests:
                say(f"warning: the comparator stored {stored} of {opts.requests} pairs")
            sup.stop_all()
            mark("drain and stop")
            summary.update(asyncio.run(judge_and_report(opts)))
            mark("verdict and report")
        except KeyboardInterrupt:
            say("interrupted: stopping every process the demo started")
            raise
        finally:
            sup.stop_all()
            summary["exit_codes"] = {c.name: c.proc.returncode for c in sup.children if c.proc}
            summary["seconds"] = round(time.monotonic() - started, 1)
            _write_summary(opts, summary)
    _print_summary(summary)
    return EXIT_CODES.get(summary["decision"], 3)


def _write_summary(opts: DemoOptions, summary: dict[str, Any]) -> None:
    path = opts.out / "demo.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")


def _fmt(x: Any, unit: str = "", pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}%" if pct else f"{x:.2f}{unit}"


def _print_summary(s: dict[str, Any]) -> None:
    n = s["numbers"]
    v = s["verdict"]
    window = s["window_seconds"]
    print(f"demo policy: 24 h window shortened to {window:.0f} s — not a real verdict")
    print(
        f"verdict: {s['decision']}  (score {v.get('score', 0):.0f}, experiment {s['experiment']})"
    )
    for reason in v.get("reasons", []):
        print(f"  - {reason}")
    disagree = n.get("top1_disagreement")
    print(
        f"pairs {n.get('pairs')}   top-1 agreement "
        f"{_fmt(None if disagree is None else 1 - disagree, pct=True)}   "
        f"p99 prod {_fmt(n.get('prod_p99_ms'), ' ms')} / candidate "
        f"{_fmt(n.get('cand_p99_ms'), ' ms')}   candidate timeouts "
        f"{_fmt(n.get('cand_timeout_rate'), pct=True)}"
    )
    for value, seg in s.get("segments", {}).get("parity", {}).items():
        rate = 1 - seg["agree"] / seg["n"] if seg["n"] else None
        print(
            f"  segment parity={value}: {seg['pairs']} pairs, top-1 disagreement "
            f"{_fmt(rate, pct=True)}"
        )
    print(f"report: {s['report']['html']}  (also report.json, report.md; run in {s['seconds']} s)")
