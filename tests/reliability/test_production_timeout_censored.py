"""A production timeout is a right-censored latency at production's deadline, end to end.

A real ``shadowtee proxy`` (production deadline 300 ms) in front of a production that hangs on some
requests, a healthy candidate and a real ``shadowtee comparator``: every production timeout reaches
the comparator with ``latency_ms`` = the deadline and is counted as censored in production's
latency histogram, so production's upper quantiles are the deadline, not the completed calls'.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability.fakes import (
    FakeCandidate,
    FakeProduction,
    LoopThread,
    ProxyProcess,
    free_port,
    infer_body,
    wait_until,
)

SHADOWTEE = str(Path(sys.executable).with_name("shadowtee"))
PROD_TIMEOUT_MS = 300
EXPERIMENT = "censored"
OK, HUNG = 5, 3


@pytest.fixture
def comparator(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    db = tmp_path / "c.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWTEE_")}
    env["SHADOWTEE_COMPARATOR__WARMUP_MINUTES"] = "0"  # latency counts from the first pair
    log = open(tmp_path / "comparator.log", "wb")  # noqa: SIM115 - closed once started
    proc = subprocess.Popen(
        [SHADOWTEE, "comparator", "--listen", f"127.0.0.1:{port}", "--db", f"sqlite:///{db}",
         "--verdict-interval-s", "0"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    log.close()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "comparator.log").read_text())
        try:
            return httpx.get(url + "/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, "the comparator ready", 60)
        yield url, db
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_production_timeout_reaches_the_comparator_censored_at_the_deadline(
    comparator: tuple[str, Path], tmp_path: Path
) -> None:
    url, db = comparator
    lt = LoopThread()
    prod, cand = FakeProduction(lt), FakeCandidate(lt)
    proxy = ProxyProcess(
        prod=lt.serve(prod.app()),
        candidate=lt.serve(cand.app()),
        comparator=url,
        spool_dir=tmp_path / "spool",
        experiment=EXPERIMENT,
        env={"SHADOWTEE_PROXY__PROD_TIMEOUT_MS": str(PROD_TIMEOUT_MS)},
    )
    try:
        with httpx.Client(timeout=10) as client:
            for i in range(OK + HUNG):
                mode = "ok" if i < OK else "phang"
                resp = client.post(
                    f"{proxy.url}/v2/models/{mode}/infer",
                    content=infer_body(i),
                    headers={"Content-Type": "application/json"},
                )
                assert resp.status_code == (200 if mode == "ok" else 504), resp.text
        assert proxy.terminate() == 0  # flushes the last pairs
    finally:
        proxy.stop()
        prod.gate.open()
        lt.close()

    def stored() -> int:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM pairs").fetchone()[0])

    wait_until(lambda: stored() == OK + HUNG, "every pair stored", 30)
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT prod_outcome, prod_latency_ms FROM pairs WHERE prod_outcome = 'timeout'"
        ).fetchall()
    assert rows == [("timeout", float(PROD_TIMEOUT_MS))] * HUNG

    summary = httpx.get(f"{url}/v1/experiments/{EXPERIMENT}/summary", timeout=10).json()
    prod_latency = summary["latency_ms"]["prod"]
    assert (prod_latency["n"], prod_latency["censored"]) == (OK, HUNG)
    # 3 of 8 calls took at least 300 ms: p95 and p99 are the deadline, flagged as censored
    assert prod_latency["p95"] == prod_latency["p99"] == PROD_TIMEOUT_MS
    assert {"p95", "p99"} <= set(prod_latency["censored_quantiles"])
    assert prod_latency["p50"] < PROD_TIMEOUT_MS
