"""Process and measurement helpers for the proxy benchmark: start things pinned to a core, read
their CPU time and peak memory from /proc, run wrk and the paced load generator, parse /metrics.

Everything here is bounded: every wait has a deadline and every child is stopped in ``Processes``'
``stop_all`` even when a run fails half-way.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LOAD_CORE",
    "SERVER_CORE",
    "Processes",
    "core_busy_seconds",
    "cpu_seconds",
    "cpu_user_system",
    "free_port",
    "get_json",
    "missing_tools",
    "parse_prometheus",
    "peak_rss_bytes",
    "pinned",
    "run_paced",
    "run_wrk",
    "take_bench_lock",
    "wait_for_port",
]

BENCH_DIR = Path(__file__).resolve().parent
LOAD_CORE = 0  # wrk and the paced generator
SERVER_CORE = 1  # the proxy under test, fake upstreams, fake comparator
CLK_TCK = os.sysconf("SC_CLK_TCK")

INSTALL_HINT = {
    "wrk": "apt-get update && apt-get install -y wrk",
    "nginx": "apt-get update && apt-get install -y nginx",
    "taskset": "apt-get update && apt-get install -y util-linux",
}


def missing_tools(names: list[str]) -> dict[str, str]:
    """The tools in ``names`` that are not on PATH, each with the command that installs it."""
    found = {
        name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") for name in names
    }
    return {
        name: INSTALL_HINT.get(name, f"install {name}") for name, path in found.items() if not path
    }


def tool_path(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise RuntimeError(f"{name} not found: {INSTALL_HINT.get(name, 'install it')}")
    return path


def pinned(core: int, argv: list[str]) -> list[str]:
    """``argv`` run on one CPU core (taskset execs, so the PID is the program's own)."""
    return [tool_path("taskset"), "-c", str(core), *argv]


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Return once 127.0.0.1:``port`` accepts a connection; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.args!r} exited with {proc.returncode} before listening"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


def get_json(url: str, method: str = "GET", timeout: float = 3.0) -> Any:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def get_text(url: str, timeout: float = 3.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


# --- /proc -----------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx or a proxy might fork workers)."""
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 256:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                continue
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its children (from /proc/PID/stat)."""
    user, system = cpu_user_system(pid)
    return user + system


def cpu_user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds used so far by ``pid`` and its children."""
    user = system = 0
    for p in _tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        user += int(fields[11])  # utime, stime (fields 14, 15 of stat)
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def core_busy_seconds(core: int) -> float:
    """Non-idle CPU seconds spent on one core since boot, by anyone (from /proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            v = [int(x) for x in line.split()[1:]]
            # user nice system idle iowait irq softirq steal: everything but idle and iowait
            return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / CLK_TCK
    raise RuntimeError(f"no cpu{core} line in /proc/stat")


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set (VmHWM) of ``pid`` and its children, in bytes."""
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


# --- processes -------------------------------------------------------------------------------


def take_bench_lock(path: Path = Path("/tmp/shadowtee-proxy-bench.lock")) -> Any:
    """An exclusive lock so two benchmarks never share the two cores (each would measure the other).

    Returns the open lock file (keep it open for the whole run) or raises with the holder's pid.
    """
    import fcntl

    handle = open(path, "a+")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise RuntimeError(
            f"another proxy benchmark is running (pid {holder}); two at once on this machine "
            "would measure each other, so wait for it to finish"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


@dataclass
class Processes:
    """Children started by the benchmark, stopped in reverse order by ``stop_all``."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self,
        argv: list[str],
        *,
        core: int,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        stderr = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            pinned(core, argv),
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        self.started.append(proc)
        return proc

    def start_fake(
        self, args: list[str], log: Path | None = None, core: int = SERVER_CORE
    ) -> tuple[subprocess.Popen[bytes], int]:
        """Start ``fake_upstreams.py ARGS`` on ``core``; return it and its port."""
        proc = self.start(
            [sys.executable, str(BENCH_DIR / "fake_upstreams.py"), *args], core=core, log=log
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15.0)
        line = proc.stdout.readline().decode() if ready else ""
        if not line.startswith("READY "):
            self.stop(proc)
            raise RuntimeError(f"fake {args} did not start (got {line!r})")
        return proc, int(line.split()[1])

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        if proc.stdout:
            proc.stdout.close()
        if proc in self.started:
            self.started.remove(proc)

    def own_cpu_seconds(self, core: int = SERVER_CORE) -> float:
        """CPU seconds used so far by every child still running on ``core`` (the proxy and the
        fakes there)."""
        return sum(
            cpu_seconds(p.pid)
            for p in self.started
            if p.poll() is None and os.sched_getaffinity(p.pid) == {core}
        )

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            self.stop(proc)


# --- load ------------------------------------------------------------------------------------


def run_wrk(url: str, connections: int, duration: float, timeout_s: float = 2.0) -> dict[str, Any]:
    """Closed-loop max throughput: wrk, one thread on the load core, ``connections`` keep-alive."""
    argv = pinned(
        LOAD_CORE,
        [
            tool_path("wrk"),
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            f"--timeout={timeout_s:g}s",
            "-s",
            str(BENCH_DIR / "wrk_post.lua"),
            url,
        ],
    )
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            data: dict[str, Any] = json.loads(line[len("BENCH-JSON ") :])
            seconds = data["duration_us"] / 1e6
            good = data["requests"] - data["status"]
            data["rps"] = good / seconds if seconds else 0.0
            data["good"] = good
            return data
    raise RuntimeError(f"wrk gave no summary (rc {out.returncode}): {out.stderr.strip()[:300]}")


def run_paced(
    url: str, rate: float, duration: float, timeout_s: float = 2.0, warmup: float = 1.0
) -> dict[str, Any]:
    """Open-loop fixed rate from ``paced_load.py`` on the load core."""
    argv = pinned(
        LOAD_CORE,
        [
            sys.executable,
            str(BENCH_DIR / "paced_load.py"),
            f"--url={url}",
            f"--rate={rate:g}",
            f"--duration={duration:g}",
            f"--timeout={timeout_s:g}",
            f"--warmup={warmup:g}",
        ],
    )
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=warmup + duration + timeout_s + 30,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"paced_load failed (rc {out.returncode}): {out.stderr.strip()[-300:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# --- Prometheus text -------------------------------------------------------------------------


def parse_prometheus(text: str) -> dict[str, float]:
    """``{'name{label="v",...}': value}`` for every sample line (labels kept verbatim)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            samples[key.strip()] = float(value)
        except ValueError:
            continue
    return samples
