"""Child processes for ``shadowtee demo``: free loopback ports, readiness, and a sure stop.

Every process the demo starts is a real ``shadowtee`` subprocess with its own log file. Each lives
in its own session, so a Ctrl-C in the terminal reaches only the demo, which then stops them in a
chosen order (the proxy first, so it flushes its pairs); on Linux each child also gets
``PR_SET_PDEATHSIG`` so it is told to stop even if the demo itself dies by SIGKILL.

A port is chosen by binding ``127.0.0.1:0`` and closing the socket; another process can take it
before the child binds it, so a child that dies with "address already in use" during start-up is
started again on fresh ports, a bounded number of times.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Child", "ChildError", "Launch", "Supervisor", "free_port", "shadowtee_argv"]

START_ATTEMPTS = 3
POLL_INTERVAL_S = 0.2
_PORT_IN_USE = ("address already in use", "errno 98", "eaddrinuse")

# A child is described by a function that picks its ports and returns (argv, ready URL, ports),
# so that a restart after a port clash gets fresh ports.
Launch = Callable[[], tuple[list[str], str, dict[str, int]]]


class ChildError(Exception):
    """A child failed to start or become ready; ``str()`` names it and shows its log's tail."""


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shadowtee_argv(*args: str) -> list[str]:
    """``shadowtee ARGS`` with this interpreter, so it works from a virtualenv not on PATH."""
    return [sys.executable, "-m", "shadowtee", *args]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    launch: Launch
    log_path: Path
    argv: list[str] = field(default_factory=list)
    ready_url: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    attempts: int = 0
    ready: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])


class Supervisor:
    """Starts children, waits until they answer their ready URL, and stops every one of them."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.children: list[Child] = []

    def start(self, name: str, launch: Launch) -> Child:
        child = Child(name=name, launch=launch, log_path=self.log_dir / f"{name}.log")
        self.children.append(child)
        self._spawn(child)
        return child

    def _spawn(self, child: Child) -> None:
        child.argv, child.ready_url, child.ports = child.launch()
        child.attempts += 1
        with open(child.log_path, "ab") as log:
            child.proc = subprocess.Popen(
                child.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def wait_ready(self, children: Sequence[Child], timeout_s: float) -> None:
        """Poll each child's ready URL until all answer 200; raise :class:`ChildError` if not."""
        deadline = time.monotonic() + timeout_s
        while True:
            for child in (c for c in children if not c.ready):
                assert child.proc is not None
                code = child.proc.poll()
                if code is None:
                    child.ready = _answers(child.ready_url)
                    continue
                tail = child.log_tail()
                if child.attempts < START_ATTEMPTS and any(s in tail.lower() for s in _PORT_IN_USE):
                    self._spawn(child)  # lost a port race: again, on fresh ports
                    continue
                raise ChildError(
                    f"{child.name} exited with code {code} during start-up "
                    f"({' '.join(child.argv[2:])}); last lines of {child.log_path}:\n{tail}"
                )
            if all(c.ready for c in children):
                return
            if time.monotonic() > deadline:
                late = ", ".join(f"{c.name} ({c.ready_url})" for c in children if not c.ready)
                raise ChildError(f"not ready after {timeout_s:g} s: {late}")
            time.sleep(POLL_INTERVAL_S)

    def stop(self, child: Child, grace_s: float = 10.0) -> int | None:
        """SIGTERM the child's process group, SIGKILL it after ``grace_s``; the exit code."""
        proc = child.proc
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        _signal_group(proc.pid, signal.SIGKILL)  # anything the child left in its group
        return proc.returncode

    def stop_all(self, grace_s: float = 10.0) -> None:
        """Stop every child, the latest started first (the proxy before what it talks to)."""
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                self.stop(child, grace_s)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False
