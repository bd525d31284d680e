"""Secrets, authentication and injection, end to end through real processes.

One pipeline runs once for the module: a client sends requests carrying secrets (in the headers
named by ``redact_headers``) and a SQL-injection string as its request id and in its route,
through a real ``shadowtee proxy`` (log level DEBUG) to a fake production, a candidate that echoes
every header it receives into its answer, and a real ``shadowtee comparator`` (bearer token, request
bodies stored) on SQLite. Each test then searches one place the secrets could leak to.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.reliability.fakes import (
    FakeCandidate,
    FakeComparator,
    FakeProduction,
    LoopThread,
    ProxyProcess,
    free_port,
    infer_body,
    wait_until,
)

SHADOWTEE = str(Path(sys.executable).with_name("shadowtee"))
TOKEN = "comparator-token-7f3a9c"
INJECT = "x'; DROP TABLE pairs; --"
SECRETS = {
    "Authorization": "Bearer SECRET-AUTH-4b1d",
    "Cookie": "session=SECRET-COOKIE-9e2f",
    "X-Api-Key": "SECRET-APIKEY-77aa",
    "X-Internal-Token": "SECRET-INTERNAL-c0de",  # added to redact_headers by configuration
}
SECRET_VALUES = [v.split(" ", 1)[-1].split("=", 1)[-1] for v in SECRETS.values()] + [TOKEN]
N = 5
EXPERIMENT = "security"


@dataclass
class Pipeline:
    tmp: Path
    prod: FakeProduction
    cand: FakeCandidate
    proxy_log: str
    comparator_log: str
    db: Path
    admin: str
    status_doc: str
    rids: list[str]
    comparator_url: str


def _leaks(blob: bytes | str) -> list[str]:
    text = blob if isinstance(blob, str) else blob.decode("latin-1")
    return [s for s in SECRET_VALUES if s in text]


def _start_comparator(tmp: Path, db: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = tmp / "comparator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [SHADOWTEE, "--log-level", "DEBUG", "comparator", "--listen", f"127.0.0.1:{port}",
             "--db", f"sqlite:///{db}", "--token", TOKEN, "--store-request-bodies"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError("comparator exited: " + log.read_text()[-2000:])
        try:
            return httpx.get(url + "/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, "the comparator ready", 60)
    return proc, url, log


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    tmp = tmp_path_factory.mktemp("security")
    db = tmp / "pairs.db"
    lt = LoopThread()
    comp_proc, comp_url, comp_log = _start_comparator(tmp, db)
    proxy: ProxyProcess | None = None
    try:
        prod, cand = FakeProduction(lt), FakeCandidate(lt)
        proxy = ProxyProcess(
            prod=lt.serve(prod.app()),
            candidate=lt.serve(cand.app()),
            comparator=comp_url,
            spool_dir=tmp / "spool",
            experiment=EXPERIMENT,
            log_level="DEBUG",
            env={
                "SHADOWTEE_PROXY__COMPARATOR_TOKEN": TOKEN,
                "SHADOWTEE_PROXY__INCLUDE_REQUEST_BODY": "true",
                "SHADOWTEE_PROXY__REDACT_HEADERS": json.dumps(
                    ["authorization", "cookie", "x-api-key", "x-internal-token"]
                ),
            },
        )
        rids = [INJECT] + [f"{INJECT}-{i}" for i in range(1, N)]
        route = f"/v2/models/{quote('echo' + INJECT, safe='')}/infer"
        with httpx.Client(timeout=10) as client:
            for i, rid in enumerate(rids):
                path = route if i == 0 else "/v2/models/echo/infer"
                headers = {
                    **SECRETS,
                    "X-Shadow-Request-Id": rid,
                    "Content-Type": "application/json",
                }
                resp = client.post(proxy.url + path, content=infer_body(i), headers=headers)
                assert resp.status_code == 200, resp.text
                assert resp.headers["X-Shadow-Request-Id"] == rid
            status_doc = client.get(proxy.admin + "/admin/status").text

        def stored() -> bool:
            if not db.exists():
                return False
            with sqlite3.connect(db) as conn:
                return bool(conn.execute("SELECT count(*) FROM pairs").fetchone()[0] >= N)

        wait_until(stored, "every pair in the database", 30)
        admin = proxy.admin
        assert proxy.terminate() == 0
        comp_proc.terminate()
        comp_proc.wait(30)
        yield Pipeline(
            tmp, prod, cand, proxy.stderr(), comp_log.read_text(errors="replace"), db, admin,
            status_doc, rids, comp_url,
        )  # fmt: skip
    finally:
        if proxy is not None:
            proxy.stop()
        if comp_proc.poll() is None:
            comp_proc.terminate()
            comp_proc.wait(30)
        lt.close()


def test_production_gets_the_secrets_the_candidate_does_not(pipeline: Pipeline) -> None:
    assert len(pipeline.prod.seen) == N and len(pipeline.cand.seen) == N
    for seen in pipeline.prod.seen:
        assert seen["headers"]["Authorization"] == SECRETS["Authorization"]
    for seen in pipeline.cand.seen:
        names = {k.lower() for k in seen["headers"]}
        assert not names & {"authorization", "cookie", "x-api-key", "x-internal-token"}
        assert seen["headers"].get("X-Shadow") == "1"
        assert not _leaks(json.dumps(seen["headers"]))


def test_no_secret_in_a_log_line_or_admin_status(pipeline: Pipeline) -> None:
    assert "shadowtee.proxy" in pipeline.proxy_log  # the log was captured
    assert not _leaks(pipeline.proxy_log)
    assert not _leaks(pipeline.comparator_log)
    assert not _leaks(pipeline.status_doc)


def test_no_secret_in_the_database_and_injection_is_stored_verbatim(pipeline: Pipeline) -> None:
    for path in pipeline.tmp.glob("pairs.db*"):  # the database and its WAL
        assert not _leaks(path.read_bytes()), path
    with sqlite3.connect(pipeline.db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"pairs", "experiments", "hourly_aggregates"} <= tables  # nothing was dropped
        # A client's own id is stored with the proxy's nonce after "~" (proxy.app._pair_key).
        row = conn.execute(
            "SELECT request_id, route FROM pairs WHERE substr(request_id, 1, ?) = ?",
            (len(INJECT) + 1, INJECT + "~"),
        ).fetchone()
        assert row is not None and row[0].rsplit("~", 1)[0] == INJECT
        assert row[1] == f"/v2/models/echo{INJECT}/infer"
        ids = {r[0].rsplit("~", 1)[0] for r in conn.execute("SELECT request_id FROM pairs")}
    assert ids == set(pipeline.rids)


def test_no_secret_in_a_report(pipeline: Pipeline) -> None:
    out = pipeline.tmp / "report"
    day = datetime.now(UTC).date().isoformat()
    run = subprocess.run(
        [SHADOWTEE, "report", "--db", f"sqlite:///{pipeline.db}", "--experiment", EXPERIMENT,
         "--day", day, "--out", str(out)],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert run.returncode in (0, 1, 3), run.stderr.decode()[-2000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files, run.stderr.decode()[-2000:]
    for path in files:
        assert not _leaks(path.read_bytes()), path
    assert not _leaks(run.stdout + run.stderr)
    html = (out / "report.html").read_text()
    assert INJECT not in html or "x&#x27;; DROP" in html or "x&#39;; DROP" in html


def test_comparator_refuses_unauthenticated_writes(pipeline: Pipeline, tmp_path: Path) -> None:
    pair = {
        # Dated now: a pair far before the experiment's first one would be refused as too old.
        "v": 1, "request_id": "unauth-1", "experiment": EXPERIMENT,
        "ts": datetime.now(UTC).isoformat(),
        "route": "/r", "request": {"sha256": "0" * 64},
        "prod": {"outcome": "ok", "status": 200}, "candidate": {"outcome": "ok", "status": 200},
    }  # fmt: skip
    body = json.dumps({"pairs": [pair]})

    def count() -> int:
        with sqlite3.connect(pipeline.db) as conn:
            return int(conn.execute("SELECT count(*) FROM pairs").fetchone()[0])

    before = count()
    proc, url, _ = _start_comparator(tmp_path, pipeline.db)
    try:
        with httpx.Client(timeout=10) as client:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": TOKEN},  # no scheme
                {"Authorization": f"Basic {TOKEN}"},
                {"Authorization": f"Bearer {TOKEN}x"},
            ):
                resp = client.post(url + "/v1/pairs", content=body, headers={"Content-Type": "application/json", **headers})  # fmt: skip
                assert resp.status_code == 401, headers
            assert count() == before
            bad = json.dumps({"pairs": [{**pair, "experiment": INJECT}]})
            resp = client.post(url + "/v1/pairs", content=bad, headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})  # fmt: skip
            # Experiment names are a restricted alphabet: the pair is refused into the quarantine.
            assert resp.status_code == 200 and resp.json()["refused"][0]["reason"] == "invalid"
            assert count() == before
            resp = client.post(url + "/v1/pairs", content=body, headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})  # fmt: skip
            assert resp.status_code in (200, 202), resp.text
            wait_until(lambda: count() == before + 1, "the authenticated pair stored")
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_proxy_admin_surface_has_no_write_endpoint(tmp_path: Path) -> None:
    lt = LoopThread()
    try:
        prod, cand = FakeProduction(lt), FakeCandidate(lt)
        proxy = ProxyProcess(
            prod=lt.serve(prod.app()), candidate=lt.serve(cand.app()), comparator=None,
            spool_dir=tmp_path / "spool", env={"SHADOWTEE_PROXY__COMPARATOR_TOKEN": TOKEN},
        )  # fmt: skip
        try:
            with httpx.Client(timeout=10) as client:
                for path in ("/metrics", "/health/live", "/health/ready", "/admin/status",
                             "/admin/config", "/admin/shutdown", "/admin/spool", "/"):  # fmt: skip
                    for method in ("POST", "PUT", "PATCH", "DELETE"):
                        resp = client.request(method, proxy.admin + path, content=b"{}")
                        assert resp.status_code in (404, 405), (method, path, resp.status_code)
                status = client.get(proxy.admin + "/admin/status").text
            assert TOKEN not in status
            assert proxy.proc.poll() is None
        finally:
            proxy.stop()
    finally:
        lt.close()


def test_forward_auth_to_candidate_when_configured(tmp_path: Path) -> None:
    lt = LoopThread()
    try:
        prod, cand, comp = FakeProduction(lt), FakeCandidate(lt), FakeComparator()
        proxy = ProxyProcess(
            prod=lt.serve(prod.app()), candidate=lt.serve(cand.app()), comparator=lt.serve(comp.app()),
            spool_dir=tmp_path / "spool", env={"SHADOWTEE_PROXY__FORWARD_AUTH_TO_CANDIDATE": "true"},
        )  # fmt: skip
        try:
            with httpx.Client(timeout=10) as client:
                resp = client.post(proxy.url + "/v2/models/echo/infer", content=infer_body(1), headers=SECRETS)  # fmt: skip
            assert resp.status_code == 200
            wait_until(lambda: cand.seen, "the candidate call")
            assert cand.seen[0]["headers"]["Authorization"] == SECRETS["Authorization"]
            wait_until(lambda: comp.pairs, "the pair")
        finally:
            proxy.stop()
    finally:
        lt.close()


def test_bearer_tokens_are_compared_in_constant_time() -> None:
    """Timing cannot be asserted reliably; the comparison primitive can."""
    import inspect

    from comparator import ingest

    assert "hmac.compare_digest" in inspect.getsource(ingest.check_token)
