"""One measurement of one (target, candidate) configuration of the proxy benchmark.

:class:`Bench` owns the long-lived fakes (production, three candidates, comparator) and, per
measurement, starts a fresh proxy pinned to the server core, drives wrk and the paced generator at
it, reads its CPU time, peak RSS and (for shadowtee) its ``/metrics`` accounting, and stops it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    BENCH_DIR,
    LOAD_CORE,
    SERVER_CORE,
    Processes,
    core_busy_seconds,
    cpu_seconds,
    cpu_user_system,
    free_port,
    get_json,
    get_text,
    parse_prometheus,
    peak_rss_bytes,
    pinned,
    run_paced,
    run_wrk,
    wait_for_port,
)

__all__ = [
    "CANDIDATES",
    "TARGETS",
    "Bench",
    "contaminated",
    "measure_once",
    "shadowtee_available",
]

TARGETS = ("direct", "nginx", "handwritten", "shadowtee", "baseline")
# shadowtee from this tree, and (``--baseline REV``) the same command run from a worktree of REV.
SHADOWTEES = frozenset({"shadowtee", "baseline"})
CANDIDATES = {"healthy": [], "slow": ["--delay-ms", "200"], "hung": ["--hang"]}
INFER_PATH = "/v2/models/bench/infer"
SHADOW_TIMEOUT_MS = 250
SHADOWTEE = Path(sys.executable).parent / "shadowtee"


def shadowtee_available() -> tuple[bool, str]:
    """Whether ``shadowtee proxy`` exists yet; the reason when it does not."""
    if not SHADOWTEE.exists():
        return False, f"{SHADOWTEE} not found"
    out = subprocess.run(
        [str(SHADOWTEE), "proxy", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    if out.returncode != 0:
        return (
            False,
            f"`shadowtee proxy --help` exited {out.returncode}: {out.stderr.strip()[-200:]}",
        )
    return True, ""


def proxy_source_digest(root: Path = BENCH_DIR.parent) -> str:
    """A digest of the proxy's source under ``root``, so runs against different code are not
    silently mixed."""
    h = hashlib.sha256()
    base = root / "proxy"
    for path in sorted(base.rglob("*.py")):
        h.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


class Bench:
    """Holds the long-lived fakes and runs one (target, candidate) measurement at a time."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.procs = Processes()
        self.ports: dict[str, int] = {}

    def start_fakes(self) -> None:
        log = self.workdir / "fakes.log"
        _, self.ports["prod"] = self.procs.start_fake(["prod"], log)
        # The fake comparator reads every batch shadowtee ships, a cost neither nginx nor direct
        # access has: it runs on the load core, so the proxy's core is not charged with it.
        _, self.ports["comparator"] = self.procs.start_fake(["comparator"], log, core=LOAD_CORE)
        for name, extra in CANDIDATES.items():
            _, self.ports[name] = self.procs.start_fake(["candidate", *extra], log)

    def url(self, role: str) -> str:
        return f"http://127.0.0.1:{self.ports[role]}"

    # --- targets -----------------------------------------------------------------------------

    def start_target(
        self, target: str, cand: str
    ) -> tuple[subprocess.Popen[bytes] | None, int, int | None]:
        """Start the proxy; return (process or None for direct, data port, admin port or None)."""
        if target == "direct":
            return None, self.ports["prod"], None
        port = free_port()
        log = self.workdir / f"{target}.log"
        admin: int | None = None
        if target == "nginx":
            conf_dir = self.workdir / f"nginx-{port}"
            conf_dir.mkdir()
            template = (BENCH_DIR / "nginx_mirror.conf.tmpl").read_text()
            conf = template.format(
                workdir=conf_dir,
                prod_port=self.ports["prod"],
                cand_port=self.ports[cand],
                listen_port=port,
                shadow_timeout_ms=SHADOW_TIMEOUT_MS,
            )
            (conf_dir / "nginx.conf").write_text(conf)
            argv = ["nginx", "-p", str(conf_dir), "-c", str(conf_dir / "nginx.conf")]
            proc = self.procs.start(argv, core=SERVER_CORE, log=log)
        elif target == "handwritten":
            argv = [
                sys.executable,
                str(BENCH_DIR / "handwritten_tee.py"),
                f"--port={port}",
                f"--prod={self.url('prod')}",
                f"--candidate={self.url(cand)}",
            ]
            proc = self.procs.start(argv, core=SERVER_CORE, log=log)
        else:
            admin = free_port()
            argv = [
                str(SHADOWTEE),
                "proxy",
                f"--listen=127.0.0.1:{port}",
                f"--prod={self.url('prod')}",
                f"--candidate={self.url(cand)}",
                f"--admin-listen=127.0.0.1:{admin}",
                f"--comparator={self.url('comparator')}",
                f"--shadow-timeout-ms={SHADOW_TIMEOUT_MS}",
                f"--max-inflight={self.args.max_inflight}",
                "--experiment=bench",
            ]
            env = {"SHADOWTEE_PROXY__SPOOL_DIR": str(self.workdir / f"spool-{port}")}
            if target == "baseline":  # its packages come first on the path: the old code runs
                env["PYTHONPATH"] = str(self.args.baseline_dir)
            proc = self.procs.start(argv, core=SERVER_CORE, env=env, log=log)
        wait_for_port(port, 20.0, proc)
        if admin is not None:
            wait_for_port(admin, 20.0, proc)
        return proc, port, admin

    # --- one measurement ---------------------------------------------------------------------

    def measure(self, target: str, cand: str) -> dict[str, Any]:
        a = self.args
        proc, port, admin = self.start_target(target, cand)
        url = f"http://127.0.0.1:{port}{INFER_PATH}"
        result: dict[str, Any] = {"target": target, "candidate": cand}
        if target == "shadowtee":
            result["proxy_src_sha256"] = proxy_source_digest()
        elif target == "baseline":
            result["proxy_src_sha256"] = proxy_source_digest(self.args.baseline_dir)
        try:
            if a.warmup > 0:
                run_wrk(url, a.connections, a.warmup)
            time.sleep(0.3)  # let warm-up tees finish so they are not counted below
            user0, sys0 = cpu_user_system(proc.pid) if proc else (0.0, 0.0)
            cpu0 = user0 + sys0
            ours0, core0 = self.procs.own_cpu_seconds(), core_busy_seconds(SERVER_CORE)
            spy = self.start_py_spy(proc, target, cand) if a.py_spy else None
            wrk = run_wrk(url, a.connections, a.duration)
            if spy is not None:
                spy.wait(30)
            ours1, core1 = self.procs.own_cpu_seconds(), core_busy_seconds(SERVER_CORE)
            cpu1 = cpu_seconds(proc.pid) if proc else 0.0
            # The tees of the phase finish or time out; shadowtee also ships the pairs it could
            # not ship during wrk (its comparator shares the load core): all of it is the cost
            # of those requests, so the CPU is read again once it is done.
            time.sleep(SHADOW_TIMEOUT_MS / 1000 + 0.3)
            if admin is not None:
                result["settled_after_wrk"] = self.wait_quiet(admin, poll_s=0.25)
            user2, sys2 = cpu_user_system(proc.pid) if proc else (0.0, 0.0)
            cpu2 = user2 + sys2
            # CPU on the server core used by processes that are not part of this benchmark:
            # anything above a few percent means the numbers are contaminated.
            seconds = wrk["duration_us"] / 1e6
            result["foreign_cpu_share"] = max(0.0, (core1 - core0) - (ours1 - ours0)) / seconds
            result["server_core_idle_share"] = max(0.0, 1.0 - (core1 - core0) / seconds)
            result["own_cpu_share"] = (ours1 - ours0) / seconds
            result["wrk"] = wrk
            result["rps"] = wrk["rps"]
            if proc and wrk["good"] > 0:
                result["cpu_s_per_10k"] = (cpu2 - cpu0) / wrk["good"] * 10_000
                # The same split into the proxy's own (user) and the kernel's (system) time.
                result["cpu_user_s_per_10k"] = (user2 - user0) / wrk["good"] * 10_000
                result["cpu_system_s_per_10k"] = (sys2 - sys0) / wrk["good"] * 10_000
                result["cpu_s_per_10k_during_wrk"] = (cpu1 - cpu0) / wrk["good"] * 10_000
            result.update(self.fixed_rate(target, cand, url, admin, proc))
            if a.rates:
                result["ladder"] = self.ladder(url)
            if proc:
                result["peak_rss_mib"] = peak_rss_bytes(proc.pid) / 2**20
        finally:
            if proc:
                # shadowtee drains (bounded tee grace, flush); the others just get 3 s.
                self.procs.stop(proc, timeout=10.0 if target in SHADOWTEES else 3.0)
        return result

    def start_py_spy(
        self, proc: subprocess.Popen[bytes] | None, target: str, cand: str
    ) -> subprocess.Popen[bytes] | None:
        """Sample the proxy's Python stacks during the wrk window (raw collapsed stacks)."""
        spy_bin = Path(sys.executable).parent / "py-spy"
        if proc is None or target == "nginx" or not spy_bin.exists():
            return None
        self.args.out.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out = self.args.out / f"py-spy-{target}-{cand}-{stamp}.txt"
        argv = [str(spy_bin), "record", "-f", "raw", "-r", "500", "-o", str(out), "--nonblocking"]
        argv += ["-d", str(max(1, round(self.args.duration))), "-p", str(proc.pid)]
        return subprocess.Popen(
            pinned(LOAD_CORE, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def fixed_rate(
        self,
        target: str,
        cand: str,
        url: str,
        admin: int | None,
        proc: subprocess.Popen[bytes] | None = None,
    ) -> dict[str, Any]:
        """Open-loop latency at ``--rate``; also the proxy's CPU per request at that equal load
        (from before the phase until its tees ended and, for shadowtee, its pairs were shipped)."""
        a = self.args
        cand_url = self.url(cand) if target != "direct" else None
        if admin is not None:
            # Let every pair of the throughput phase reach the comparator before counting anew.
            self.wait_quiet(admin)
        if cand_url:
            get_json(cand_url + "/__bench/reset", "POST")
        get_json(self.url("comparator") + "/__bench/reset", "POST")
        before = self.scrape(admin)
        cpu0 = cpu_seconds(proc.pid) if proc else 0.0
        paced = run_paced(url, a.rate, a.rate_duration, warmup=a.rate_warmup)
        out: dict[str, Any] = {"paced": paced, "p50_ms": paced["p50_ms"], "p99_ms": paced["p99_ms"]}
        if admin is not None:
            out["shadowtee"] = self.settle_shadowtee(admin, before)
        else:
            time.sleep(SHADOW_TIMEOUT_MS / 1000 + 0.2)
        if proc and paced["sent_total"] > 0:
            cpu = cpu_seconds(proc.pid) - cpu0
            out["cpu_s_per_10k_at_rate"] = cpu / paced["sent_total"] * 10_000
        if cand_url:
            stats = get_json(cand_url + "/__bench/stats")
            out["cand_received"] = stats.get("received", 0)
            out["cand_completed"] = stats.get("completed", 0)
            out["delivered_share"] = out["cand_completed"] / paced["sent_total"]
        return out

    def ladder(self, url: str) -> dict[str, dict[str, float]]:
        """Latency at each of ``--rates`` (open loop, ``--rate-duration`` each): p50, p99,
        p99.9 and max, and the requests that failed or passed the 2 s timeout."""
        a = self.args
        out: dict[str, dict[str, float]] = {}
        for rate in a.rates:
            time.sleep(SHADOW_TIMEOUT_MS / 1000 + 0.2)  # the last phase's tees end first
            paced = run_paced(url, rate, a.rate_duration, warmup=a.rate_warmup)
            out[f"{rate:g}"] = {
                k: paced[k] for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms", "sent_total")
            } | {"failed": paced["timeouts"] + paced["errors"]}
        return out

    def scrape(self, admin: int | None) -> dict[str, float]:
        if admin is None:
            return {}
        return parse_prometheus(get_text(f"http://127.0.0.1:{admin}/metrics"))

    def wait_quiet(self, admin: int, poll_s: float = 0.1) -> bool:
        """Wait (bounded by ``--settle``) until shadowtee has nothing in flight, buffered, queued
        or spooled and every emitted pair is delivered or counted as dropped."""
        deadline = time.monotonic() + SHADOW_TIMEOUT_MS / 1000 + self.args.settle
        while True:
            m = self.scrape(admin)
            pending = sum(
                m.get(f"shadowtee_proxy_{g}", 0.0)
                for g in ("tee_inflight", "pairing_buffer_pairs", "ship_queue_pairs", "spool_pairs")
            )
            dropped = sum(
                v for k, v in m.items() if k.startswith("shadowtee_proxy_pairs_dropped_total")
            )
            emitted = m.get('shadowtee_proxy_pairs_total{state="emitted"}', 0.0)
            delivered = m.get('shadowtee_proxy_pairs_total{state="delivered"}', 0.0)
            if pending == 0 and emitted == delivered + dropped:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(poll_s)

    def settle_shadowtee(self, admin: int, before: dict[str, float]) -> dict[str, Any]:
        """Wait until every teed request of the phase is accounted for and shipped, then read it."""
        quiet = self.wait_quiet(admin)
        delta = {k: v - before.get(k, 0.0) for k, v in self.scrape(admin).items()}
        comparator = get_json(self.url("comparator") + "/__bench/stats")
        acct = summarise_accounting(delta, comparator)
        acct["settled"] = quiet
        return acct


def summarise_accounting(delta: dict[str, float], comparator: dict[str, Any]) -> dict[str, Any]:
    """Teed-request accounting from shadowtee's metric deltas over one phase.

    Outcome counters come from ``shadowtee_proxy_candidate_outcomes_total{outcome=...}``; teed is
    ``shadowtee_proxy_teed_total`` when the proxy exports it, else the sum of the outcomes that
    mean "a tee was attempted" (ok, timeout, shed, error).
    """
    outcomes: dict[str, float] = {}
    for key, value in delta.items():
        if key.startswith("shadowtee_proxy_candidate_outcomes_total{") and 'outcome="' in key:
            name = key.split('outcome="', 1)[1].split('"', 1)[0]
            outcomes[name] = outcomes.get(name, 0.0) + value
    teed_keys = [k for k in delta if k.split("{", 1)[0] == "shadowtee_proxy_teed_total"]
    parts = {k: outcomes.get(k, 0.0) for k in ("ok", "timeout", "shed", "error")}
    teed = sum(delta[k] for k in teed_keys) if teed_keys else sum(parts.values())
    delivered_pairs = delta.get('shadowtee_proxy_pairs_total{state="delivered"}', 0.0)
    return {
        "teed": teed,
        "teed_source": "shadowtee_proxy_teed_total" if teed_keys else "sum of outcomes",
        "outcomes": outcomes,
        "balanced": abs(sum(parts.values()) - teed) < 0.5,
        "delivered_share": parts["ok"] / teed if teed else None,
        "pairs_delivered_metric": delivered_pairs,
        "comparator_pairs": comparator.get("pairs", 0),
        "comparator_unique": comparator.get("unique_ids", 0),
        "comparator_matches": comparator.get("pairs", 0) == teed,
    }


def contaminated(res: dict[str, Any], max_foreign: float) -> bool:
    """Other processes competed for the server core while the benchmark was using it.

    They fill whatever the benchmark leaves idle (nginx waiting on a slow mirror barely uses the
    core), which takes nothing from it; only a busy core shared with them distorts the figures.
    """
    foreign = res.get("foreign_cpu_share", 0.0)
    busy = res.get("own_cpu_share", 0.0) >= 0.25
    idle = res.get("server_core_idle_share", 1.0)
    return bool(foreign > max_foreign and busy and idle < 0.05)


def measure_once(bench: Bench, target: str, cand: str, run: int) -> dict[str, Any]:
    """One measurement of one configuration; a failure becomes a row with ``error``."""
    t0 = time.monotonic()
    try:
        res = bench.measure(target, "healthy" if cand == "-" else cand)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        res = {"target": target, "error": str(exc)}
    res["candidate"] = cand
    res["run"] = run
    res["wall_s"] = round(time.monotonic() - t0, 1)
    return res
