"""``shadowtee comparator --workers N`` as real processes on one socket and one database."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.comparator.store_support import db_url_fixture, make_pair  # noqa: F401 - fixture
from tests.comparator.test_app_command import free_port

START_TIMEOUT_S = 60


@dataclass
class Comparator:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        m = re.search(r"workers on \S+ \(pids ([\d, ]+)\)", self.text())
        assert m, self.text()[-2000:]
        return [int(p) for p in m.group(1).split(", ")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), f"workers still running: {pids}"


@pytest.fixture(name="comparator")
def comparator_fixture(db_url: str, tmp_path: Path) -> Iterator[Comparator]:
    port = free_port()
    log = tmp_path / "comparator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shadowtee", "comparator", "--workers", "2",
             "--listen", f"127.0.0.1:{port}", "--db", db_url, "--verdict-interval-s", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    c = Comparator(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        # Both workers must be up: each answers on the shared socket once it has opened the store.
        # (Two answers from one worker are not enough: the other may still be starting.)
        ready = re.compile(r'worker (\d) INFO aiohttp\.access: .*"GET /health/ready HTTP/1\.1" 200')
        while set(ready.findall(c.text())) != {"0", "1"} or "pids" not in c.text():
            assert proc.poll() is None, c.text()[-2000:]
            assert time.monotonic() < deadline, c.text()[-2000:]
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{c.base}/health/ready", timeout=2)
            time.sleep(0.05)
        yield c
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, name
    return float(m.group(1))


def test_workers_store_every_pair_once_and_metrics_sum_every_worker(
    comparator: Comparator,
) -> None:
    exp = "workers"
    batches = [[make_pair(b * 40 + i, exp) for i in range(40)] for b in range(24)]
    retried = batches[:6]

    def post(batch: list[dict[str, object]]) -> dict[str, int]:
        # A fresh connection each: the kernel hands each one to either worker.
        r = httpx.post(f"{comparator.base}/v1/pairs", json={"pairs": batch}, timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json())

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(post, batches + retried))
    assert sum(r["inserted"] for r in results) == 24 * 40
    assert sum(r["duplicates"] for r in results) == 6 * 40

    posts = re.findall(r"worker (\d) INFO aiohttp.access: .*\"POST /v1/pairs", comparator.text())
    assert set(posts) == {"0", "1"}, "one worker took every batch"
    (info,) = [
        e
        for e in httpx.get(f"{comparator.base}/v1/experiments").json()["experiments"]
        if e["name"] == exp
    ]
    assert info["n_pairs"] == 24 * 40
    # Whichever worker answers the scrape, it reports the counts of both.
    for _ in range(4):
        text = httpx.get(f"{comparator.base}/metrics", timeout=10).text
        assert metric(text, "shadowtee_comparator_batches_total") == 30
        assert metric(text, "shadowtee_comparator_pairs_inserted_total") == 24 * 40
        assert metric(text, "shadowtee_comparator_pairs_duplicate_total") == 6 * 40


def test_sigterm_stops_every_worker_and_exits_0(comparator: Comparator) -> None:
    pids = comparator.worker_pids()
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    comparator.proc.send_signal(signal.SIGTERM)
    assert comparator.proc.wait(timeout=30) == 0
    _wait_gone(pids)


def test_a_dead_worker_stops_the_others_and_the_comparator_exits_1(
    comparator: Comparator,
) -> None:
    first, second = comparator.worker_pids()
    os.kill(second, signal.SIGKILL)
    assert comparator.proc.wait(timeout=30) == 1
    _wait_gone([first])
    assert "shadowtee-comparator-worker-1 exited with code -9" in comparator.text()
