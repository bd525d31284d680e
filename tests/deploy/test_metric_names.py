"""The alert rules and the dashboard only use metric names that shadowtee's services expose.

Each service runs as a real process on loopback; its /metrics is scraped and parsed with
prometheus_client's parser. A rule or panel naming a metric nobody exposes would never fire.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.test_rules_and_dashboard import (
    DASHBOARD,
    RULES,
    dashboard_exprs,
    referenced_metrics,
)
from tests.support.net import free_port

SHADOWTEE = [sys.executable, "-m", "shadowtee"]


def _exposed(url: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def _wait(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    tmp = tmp_path_factory.mktemp("metrics")
    comp, data, admin = free_port(), free_port(), free_port()
    env = {**os.environ, "SHADOWTEE_PROXY__SPOOL_DIR": str(tmp / "spool")}
    procs = [
        subprocess.Popen(
            [
                *SHADOWTEE,
                "comparator",
                "--listen",
                f"127.0.0.1:{comp}",
                "--db",
                f"sqlite:///{tmp}/c.db",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                *SHADOWTEE,
                "proxy",
                "--listen",
                f"127.0.0.1:{data}",
                "--admin-listen",
                f"127.0.0.1:{admin}",
                "--prod",
                f"http://127.0.0.1:{free_port()}",
                "--candidate",
                f"http://127.0.0.1:{free_port()}",
                "--comparator",
                f"http://127.0.0.1:{comp}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        _wait(f"http://127.0.0.1:{comp}/health/live", procs[0])
        _wait(f"http://127.0.0.1:{admin}/health/live", procs[1])
        yield _exposed(f"http://127.0.0.1:{comp}/metrics") | _exposed(
            f"http://127.0.0.1:{admin}/metrics"
        )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.mark.timeout(90)
def test_every_metric_in_the_alert_rules_is_exposed(exposed: set[str]) -> None:
    missing = referenced_metrics(RULES.read_text()) - exposed
    assert not missing, f"rules use metrics no service exposes: {sorted(missing)}"


@pytest.mark.timeout(90)
def test_every_metric_on_the_dashboard_is_exposed(exposed: set[str]) -> None:
    missing = referenced_metrics(dashboard_exprs(DASHBOARD)) - exposed
    assert not missing, f"dashboard uses metrics no service exposes: {sorted(missing)}"


def test_a_misspelt_metric_would_be_caught() -> None:
    assert referenced_metrics("rate(shadowtee_proxy_teeed_total[5m])") == {
        "shadowtee_proxy_teeed_total"
    }
    assert json.loads(DASHBOARD.read_text())["panels"]
