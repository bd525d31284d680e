"""No forged verdict: the attack of issue 18 against a real ``shadowtee comparator`` with a token.

The attack: after 1.5 h of pairs, an unauthenticated ``GET …/verdict?at=2099-01-01T00:00:00Z``
stored a PROMOTE, and ``shadowtee promote`` then moved the registry's production alias. Now the
read needs the token, a future ``at`` is 400 naming ``at``, the route stores nothing at any ``at``,
and ``promote`` finds no stored verdict to act on. Only the periodic look (and the CLI) store one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.fakes import free_port, wait_until

SHADOWTEE = str(Path(sys.executable).with_name("shadowtee"))
TOKEN = "forged-verdict-token-51c2"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXPERIMENT = "forged"
FUTURE = "2099-01-01T00:00:00Z"
N_PAIRS = 1500  # one every 3.6 s: 1.5 h of data, ending now


@dataclass
class Comparator:
    url: str
    db: Path
    tmp: Path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SHADOWTEE_")}


def _start(tmp: Path, db: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = open(tmp / f"comparator-{port}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [SHADOWTEE, "comparator", "--listen", f"127.0.0.1:{port}", "--db", f"sqlite:///{db}",
         *extra],
        stdout=log, stderr=subprocess.STDOUT, env={**_env(), "SHADOWTEE_COMPARATOR__TOKEN": TOKEN},
    )  # fmt: skip
    log.close()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                "comparator exited: " + (tmp / f"comparator-{port}.log").read_text()
            )
        try:
            return httpx.get(url + "/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, "the comparator ready", 60)
    return proc, url


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


def _body(probs: list[float]) -> dict[str, Any]:
    return {
        "outputs": [{"name": "probabilities", "shape": [1, 3], "datatype": "FP32", "data": probs}]
    }


def _pairs(now: datetime) -> list[dict[str, Any]]:
    start = now - timedelta(seconds=3.6 * N_PAIRS)
    side = {"outcome": "ok", "status": 200, "latency_ms": 3.0, "body": _body([0.7, 0.2, 0.1])}
    return [
        {
            "v": 1,
            "request_id": f"r{i}",
            "experiment": EXPERIMENT,
            "ts": (start + timedelta(seconds=3.6 * i)).isoformat().replace("+00:00", "Z"),
            "route": "/v2/models/m/infer",
            "request": {"sha256": f"{i:064x}"},
            "prod": side,
            "candidate": side,
        }
        for i in range(N_PAIRS)
    ]


def _stored_verdicts(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        verdicts = conn.execute("SELECT count(*) FROM verdicts").fetchone()[0]
        states = conn.execute("SELECT count(*) FROM verdict_state").fetchone()[0]
    return int(verdicts) + int(states)


@pytest.fixture(scope="module")
def comparator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Comparator]:
    tmp = tmp_path_factory.mktemp("forged")
    db = tmp / "c.db"
    # No periodic look: whatever is stored below, a request stored it.
    proc, url = _start(tmp, db, "--verdict-interval-s", "0")
    try:
        resp = httpx.post(
            url + "/v1/pairs", json={"pairs": _pairs(datetime.now(UTC))}, headers=AUTH, timeout=60
        )
        assert resp.status_code == 200 and resp.json()["inserted"] == N_PAIRS, resp.text
        yield Comparator(url, db, tmp)
    finally:
        _stop(proc)


@pytest.mark.parametrize(
    "path",
    ["/v1/experiments", f"/v1/experiments/{EXPERIMENT}/summary",
     f"/v1/experiments/{EXPERIMENT}/verdict", f"/v1/experiments/{EXPERIMENT}/verdict?at={FUTURE}",
     "/v1/experiments/nope/verdict"],
)  # fmt: skip
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}], ids=str
)
def test_every_v1_read_needs_the_token(
    comparator: Comparator, path: str, headers: dict[str, str]
) -> None:
    resp = httpx.get(comparator.url + path, headers=headers, timeout=10)
    assert resp.status_code == 401, resp.text
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "token" in resp.json()["error"]
    assert _stored_verdicts(comparator.db) == 0


def test_probes_and_metrics_stay_open(comparator: Comparator) -> None:
    for path in ("/health/live", "/health/ready", "/metrics"):
        assert httpx.get(comparator.url + path, timeout=10).status_code == 200, path


@pytest.mark.parametrize("at", [FUTURE, "2099-01-01T00:00:00", "2099-01-01T01:00:00+01:00"])
def test_a_future_at_is_400_naming_at(comparator: Comparator, at: str) -> None:
    resp = httpx.get(
        f"{comparator.url}/v1/experiments/{EXPERIMENT}/verdict",
        params={"at": at},
        headers=AUTH,
        timeout=30,
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"].startswith("at: ") and "future" in resp.json()["error"]
    assert _stored_verdicts(comparator.db) == 0


def test_the_verdict_route_computes_and_stores_nothing(comparator: Comparator) -> None:
    url = f"{comparator.url}/v1/experiments/{EXPERIMENT}/verdict"
    past = (datetime.now(UTC) - timedelta(minutes=30)).isoformat()
    for params in ({}, {"at": past}, {}):
        resp = httpx.get(url, params=params, headers=AUTH, timeout=30)
        assert resp.status_code == 200, resp.text
        # 1.5 h of a 24 h minimum window: nothing to decide yet
        assert resp.json()["decision"] == "KEEP_OBSERVING"
    assert _stored_verdicts(comparator.db) == 0


def _promote(comparator: Comparator, registry: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHADOWTEE, "promote", "--db", f"sqlite:///{comparator.db}", "--experiment", EXPERIMENT,
         "--registry", str(registry), "--model", "digits"],
        capture_output=True, text=True, timeout=60, env=_env(), check=False,
    )  # fmt: skip


def _registry(tmp: Path) -> Path:
    (tmp / "registry" / "digits").mkdir(parents=True, exist_ok=True)
    aliases = tmp / "registry" / "digits" / "aliases.json"
    aliases.write_text(json.dumps({"production": "1", "candidate": "2"}))
    return tmp / "registry"


def test_promote_refuses_after_the_attack(comparator: Comparator) -> None:
    for headers in ({}, AUTH):  # the attack, without and with the token
        httpx.get(
            f"{comparator.url}/v1/experiments/{EXPERIMENT}/verdict",
            params={"at": FUTURE},
            headers=headers,
            timeout=30,
        )
    registry = _registry(comparator.tmp)
    done = _promote(comparator, registry)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "missing, not PROMOTE" in done.stderr
    aliases = json.loads((registry / "digits" / "aliases.json").read_text())
    assert aliases["production"] == "1"


def test_the_cli_refuses_a_future_at_and_stores_nothing(comparator: Comparator) -> None:
    done = subprocess.run(
        [SHADOWTEE, "verdict", "--db", f"sqlite:///{comparator.db}", "--experiment", EXPERIMENT,
         "--at", FUTURE],
        capture_output=True, text=True, timeout=60, env=_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--at" in lines[0] and "future" in lines[0], lines
    assert _stored_verdicts(comparator.db) == 0


def test_only_the_periodic_look_stores_and_promote_acts_on_it(comparator: Comparator) -> None:
    """Run last in the module: it stores a verdict in the shared database."""
    proc, _ = _start(comparator.tmp, comparator.db, "--verdict-interval-s", "0.2")
    try:
        wait_until(lambda: _stored_verdicts(comparator.db) >= 2, "a stored periodic look", 30)
    finally:
        _stop(proc)
    done = _promote(comparator, _registry(comparator.tmp))
    assert done.returncode == 1
    assert "KEEP_OBSERVING, not PROMOTE" in done.stderr, done.stderr
