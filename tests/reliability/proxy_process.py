"""``shadowtee proxy`` as a real subprocess, and the figures a test reads from it.

:class:`ProxyProcess` starts ``.venv/bin/shadowtee proxy`` with both ports on ``127.0.0.1:0``, waits
for the one machine-readable ready line on stdout (``shadowtee proxy ready data=… admin=…``),
captures stderr (the log) to a file, and reads ``/metrics`` (parsed), ``/admin/status`` and
``/proc/<pid>`` (RSS, fds, sockets). Settings without a flag travel as ``SHADOWTEE_PROXY__*``
environment variables, exactly as an operator would set them.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["SHADOWTEE", "ProxyProcess"]

ROOT = Path(__file__).resolve().parents[2]
SHADOWTEE = str(Path(sys.executable).with_name("shadowtee"))


def _parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class ProxyProcess:
    """``shadowtee proxy`` as a subprocess on 127.0.0.1 ``:0`` ports.

    ``env`` adds ``SHADOWTEE_PROXY__*`` settings that have no flag (spool dir, timeouts, bounds).
    stderr (the log) goes to a file, so a test can read every line the proxy wrote.
    """

    def __init__(
        self,
        *,
        prod: str,
        candidate: str,
        comparator: str | None,
        spool_dir: Path,
        shadow_timeout_ms: float = 2000,
        max_inflight: int = 256,
        experiment: str = "reliability",
        env: dict[str, str] | None = None,
        log_level: str = "INFO",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        args = [SHADOWTEE, "--log-level", log_level, "proxy",
                "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                "--prod", prod, "--candidate", candidate,
                "--shadow-timeout-ms", str(shadow_timeout_ms), "--max-inflight", str(max_inflight),
                "--experiment", experiment, *extra_args]  # fmt: skip
        if comparator is not None:
            args += ["--comparator", comparator]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWTEE_")}
        full_env.update(
            SHADOWTEE_PROXY__SPOOL_DIR=str(spool_dir),
            SHADOWTEE_PROXY__FLUSH_INTERVAL_MS="100",
            SHADOWTEE_PROXY__RETRY_BACKOFF_MS="20",
        )
        full_env.update(env or {})
        spool_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = spool_dir.parent / f"proxy-{time.monotonic_ns()}.log"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._stderr, env=full_env, cwd=ROOT
        )
        self.url, self.admin = self._read_ready(30.0)
        self._http = httpx.Client(timeout=10.0)

    def _read_ready(self, limit_s: float) -> tuple[str, str]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline().decode()
                if line.startswith("shadowtee proxy ready"):
                    data = line.split("data=")[1].split()[0]
                    admin = line.split("admin=")[1].split()[0]
                    return data, admin
                if not line:
                    break
        self.stop(kill=True)
        raise AssertionError(f"proxy did not start: {self.stderr()[-2000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return _parse_metrics(self._http.get(self.admin + "/metrics").text)

    def metric(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return self.metrics().get(key, 0.0)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self._http.get(self.admin + "/admin/status").json()
        return doc

    def gauges(self) -> dict[str, float]:
        gauges: dict[str, float] = self.status()["gauges"]
        return gauges

    def settled(self) -> bool:
        """Nothing in flight, nothing waiting for its other half."""
        g = self.gauges()
        return g["tee_inflight"] == 0 and g["pairing_buffer_pairs"] == 0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def tcp_connections(self) -> int:
        """Open sockets of the process (fds that are sockets)."""
        n = 0
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{self.pid}/fd/{fd}").startswith("socket:"):
                    n += 1
        return n

    def terminate(self, limit_s: float = 30.0) -> int:
        """SIGTERM and wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(limit_s)
        finally:
            self.stop()

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if not self._stderr.closed:
            self._stderr.close()
        if hasattr(self, "_http"):
            self._http.close()
