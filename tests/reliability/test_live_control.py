"""Live control of the tee and the breaker, on real ``shadowtee proxy`` processes.

The proxies run as processes with an admin token (a file under ``SHADOWTEE_SECRETS_DIR``, as a
Kubernetes secret would be mounted); the fleet command ``shadowtee tee`` runs as a process too.
After every change the proxy's accounting balances: every request is teed, not sampled or paused,
and every teed request's pair is delivered (the fake comparator holds exactly those pairs).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.tee_rules import TeeRules
from tests.reliability.conftest import Upstreams
from tests.reliability.fakes import FakeCandidate, ProxyProcess, free_port, infer_body, wait_until
from tests.reliability.proxy_process import ROOT, SHADOWTEE

TOKEN = "fleet-admin-token-4f1c"
RID = "X-Shadow-Request-Id"

BREAKER = {
    "SHADOWTEE_PROXY__BREAKER": "true",
    "SHADOWTEE_PROXY__BREAKER_WINDOW_S": "5",
    "SHADOWTEE_PROXY__BREAKER_MIN_CALLS": "6",
    "SHADOWTEE_PROXY__BREAKER_THRESHOLD": "0.5",
    "SHADOWTEE_PROXY__BREAKER_PROBE_INTERVAL_S": "0.3",
    "SHADOWTEE_PROXY__BREAKER_PROBE_SUCCESSES": "2",
}


def _secrets(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The token as a mounted secret file, and a token file for the CLI."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "shadowtee_proxy__admin_token").write_text(TOKEN + "\n")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    return {"SHADOWTEE_SECRETS_DIR": str(secrets)}, token_file


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHADOWTEE, "tee", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def _send(client: httpx.Client, proxy: ProxyProcess, mode: str, n: int, **kw: Any) -> list[str]:
    ids = []
    for i in range(n):
        headers = {RID: kw["ids"][i]} if "ids" in kw else {}
        resp = client.post(
            f"{proxy.url}/v2/models/{mode}/infer", content=infer_body(i), headers=headers
        )
        assert resp.status_code == 200  # the client never notices the tee's state
        ids.append(resp.headers[RID])
    return ids


def _balanced(
    proxy: ProxyProcess, comparator_pairs: Callable[[], int] | None = None
) -> dict[str, Any]:
    """Wait until nothing is in flight, then check the books; return the status document."""
    wait_until(proxy.settled, "no tee in flight and an empty pairing buffer", 30)
    status: dict[str, Any] = wait_until(
        lambda: (s := proxy.status())["accounting"]["delivered"] == s["accounting"]["teed"] and s,
        "every teed pair delivered",
        30,
    )
    acc, counters = status["accounting"], status["counters"]
    assert acc["unaccounted"] == 0
    assert acc["dropped"] == 0
    if comparator_pairs is not None:
        assert comparator_pairs() == acc["teed"]
    paused = sum(counters["tee_paused"].values())
    # Every request here is a small tee-able POST: teed, left out by sampling, or paused.
    assert counters["requests"] == acc["teed"] + counters["not_sampled"] + paused
    assert sum(counters["candidate_outcomes"].values()) == acc["teed"]
    return status


@pytest.mark.timeout(120)
def test_a_hung_candidate_trips_the_breaker_and_a_recovered_one_closes_it(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    env, _ = _secrets(tmp_path)
    proxy = start_proxy(
        prod=up.prod_url,
        candidate=up.cand_url,
        comparator=up.comp_url,
        shadow_timeout_ms=150,
        env={**env, **BREAKER},
    )
    with httpx.Client(timeout=30) as client:
        _send(client, proxy, "hang", 8)  # 8 timeouts: above half of at least 6 calls
        wait_until(lambda: proxy.status()["tee"]["paused_by"] == "breaker", "the breaker", 20)
        opened = time.monotonic()
        seen_at_trip = len(up.cand.seen)
        # Paused: requests are served and counted as paused; only probes reach the candidate.
        for _ in range(200):
            _send(client, proxy, "hang", 1)
            if proxy.status()["counters"]["tee_paused"]["breaker"] >= 10:
                break
            time.sleep(0.02)
        probes = len(up.cand.seen) - seen_at_trip
        elapsed = time.monotonic() - opened
        assert proxy.status()["tee"]["paused_by"] == "breaker"  # probes into a hung one fail
        assert probes <= 1 + elapsed / 0.3, (probes, elapsed)
        up.cand.gate.open()  # the candidate recovers
        for _ in range(400):  # probes go out one per 0.3 s; two answered close the breaker
            _send(client, proxy, "hang", 1)
            if not proxy.status()["tee"]["paused"]:
                break
            time.sleep(0.02)
        assert not proxy.status()["tee"]["paused"]
        before = len(up.cand.seen)
        _send(client, proxy, "hang", 5)
        wait_until(lambda: len(up.cand.seen) == before + 5, "every request teed again")
    status = _balanced(proxy, lambda: len(up.comp.pairs))
    tee = status["tee"]
    assert tee["breaker"]["state"] == "closed"
    assert tee["breaker"]["trips"] == 1
    assert tee["changes"] == {"operator": 0, "breaker": 2}
    assert tee["last_change"]["source"] == "breaker"
    assert tee["last_change"]["what"] == "resume"
    assert status["counters"]["tee_paused"]["breaker"] >= 10
    assert proxy.metric("shadowtee_proxy_breaker_trips_total") == 1
    assert proxy.metric("shadowtee_proxy_breaker_open") == 0
    assert proxy.metric("shadowtee_proxy_tee_changes_total", source="breaker") == 2
    log = proxy.stderr()
    assert "tee control: pause by breaker" in log
    assert "tee control: resume by breaker" in log


@pytest.mark.timeout(120)
def test_a_sample_rate_change_takes_effect_without_a_restart(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    env, token_file = _secrets(tmp_path)
    proxy = start_proxy(prod=up.prod_url, candidate=up.cand_url, comparator=up.comp_url, env=env)
    pid = proxy.pid
    with httpx.Client(timeout=30) as client:
        _send(client, proxy, "ok", 6)
        wait_until(lambda: len(up.cand.seen) == 6, "six tees")
        done = _cli("rate", "0", "--admin", proxy.admin, "--token-file", str(token_file))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("ok ") and "sample_rate=0.0" in done.stdout
        _send(client, proxy, "ok", 6)
        ids = [f"rate-test-{i}" for i in range(40)]
        done = _cli(
            "rate", "0.5", "--by", "ci", "--admin", proxy.admin, "--token-file", str(token_file)
        )
        assert done.returncode == 0, done.stderr
        _send(client, proxy, "ok", len(ids), ids=ids)
    # Deterministic sampling by the client's id: exactly the ids the rule picks at 0.5.
    rules = TeeRules(["/v2/models/*/infer"], ["POST"], 0.5)
    expected = {i for i in ids if rules.sampled(i)}
    assert 0 < len(expected) < len(ids)
    wait_until(lambda: len(up.cand.seen) == 6 + len(expected), "the sampled tees")
    assert {s["rid"] for s in up.cand.seen[6:]} == expected
    status = _balanced(proxy, lambda: len(up.comp.pairs))
    assert proxy.pid == pid and proxy.proc.poll() is None  # no restart
    assert status["counters"]["not_sampled"] == 6 + len(ids) - len(expected)
    assert status["tee"]["sample_rate"] == 0.5
    assert status["tee"]["last_change"]["by"].startswith("ci from 127.0.0.1")
    assert proxy.metric("shadowtee_proxy_tee_sample_rate") == 0.5
    assert "tee control: sample_rate by ci from 127.0.0.1: 0.0 -> 0.5" in proxy.stderr()
    assert TOKEN not in proxy.stderr()


@pytest.mark.timeout(120)
def test_a_request_without_the_token_is_refused_and_changes_nothing(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    env, _ = _secrets(tmp_path)
    proxy = start_proxy(prod=up.prod_url, candidate=up.cand_url, comparator=up.comp_url, env=env)
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    other = f"http://127.0.0.1:{free_port()}"
    with httpx.Client(timeout=30) as client:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
            for path, body in (
                ("pause", {}),
                ("sample-rate", {"sample_rate": 0}),
                ("candidate", {"candidate": other}),
            ):
                resp = client.post(f"{proxy.admin}/admin/tee/{path}", json=body, headers=headers)
                assert resp.status_code == 401, (path, headers)
        done = _cli("pause", "--admin", proxy.admin, "--token-file", str(wrong))
        assert done.returncode == 1
        assert done.stdout.startswith("FAIL ") and "HTTP 401" in done.stdout
        _send(client, proxy, "ok", 4)
        wait_until(lambda: len(up.cand.seen) == 4, "every request still teed")
    status = _balanced(proxy, lambda: len(up.comp.pairs))
    tee = status["tee"]
    assert (tee["paused"], tee["sample_rate"], tee["candidate"]) == (False, 1.0, up.cand_url)
    assert tee["last_change"] is None and tee["changes"] == {"operator": 0, "breaker": 0}
    assert status["accounting"]["teed"] == 4
    assert proxy.stderr().count("no valid bearer token") == 10
    assert TOKEN not in proxy.stderr()


@pytest.mark.timeout(120)
def test_the_fleet_command_switches_every_sidecar_to_another_candidate(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    env, token_file = _secrets(tmp_path)
    proxies = [
        start_proxy(prod=up.prod_url, candidate=up.cand_url, comparator=up.comp_url, env=env)
        for _ in range(2)
    ]
    second = FakeCandidate(up.lt)
    second_url = up.lt.serve(second.app())
    admins = [a for p in proxies for a in ("--admin", p.admin)]
    with httpx.Client(timeout=30) as client:
        for proxy in proxies:
            _send(client, proxy, "ok", 3)
        wait_until(lambda: len(up.cand.seen) == 6, "tees to the first candidate")
        done = _cli("candidate", second_url, *admins, "--token-file", str(token_file))
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count("ok ") == 2 and done.stdout.count(second_url) == 2
        for proxy in proxies:
            _send(client, proxy, "ok", 4)
        wait_until(lambda: len(second.seen) == 8, "tees to the second candidate")
        # One sidecar of the fleet unreachable: the others still change; the exit code says so.
        dead = f"http://127.0.0.1:{free_port()}"
        done = _cli("pause", *admins, "--admin", dead, "--token-file", str(token_file))
        assert done.returncode == 1
        lines = done.stdout.splitlines()
        assert [ln.split()[0] for ln in lines] == ["ok", "ok", "FAIL"]
        for proxy in proxies:
            _send(client, proxy, "ok", 2)
        done = _cli("status", *admins)
        assert done.returncode == 0 and done.stdout.count("paused (operator)") == 2
    assert len(up.cand.seen) == 6 and len(second.seen) == 8  # paused: nothing new
    for proxy in proxies:
        status = _balanced(proxy)
        assert status["tee"]["candidate"] == second_url
        assert status["counters"]["tee_paused"]["operator"] == 2
        assert status["accounting"]["teed"] == 7
        assert status["accounting"]["unaccounted"] == 0
        assert proxy.metric("shadowtee_proxy_tee_candidate_info", url=second_url) == 1
        assert f"tee control: candidate by operator from 127.0.0.1: '{up.cand_url}'" in (
            proxy.stderr()
        )
    assert len(up.comp.pairs) == 14


@pytest.mark.timeout(120)
def test_calls_under_way_finish_on_the_old_candidate_after_a_switch(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    env, _ = _secrets(tmp_path)
    proxy = start_proxy(
        prod=up.prod_url,
        candidate=up.cand_url,
        comparator=up.comp_url,
        shadow_timeout_ms=20_000,
        env=env,
    )
    second = FakeCandidate(up.lt)
    second_url = up.lt.serve(second.app())
    with httpx.Client(timeout=30) as client:
        old_ids = _send(client, proxy, "hang", 3)
        wait_until(lambda: up.cand.active == 3, "three calls held by the old candidate")
        resp = client.post(
            proxy.admin + "/admin/tee/candidate",
            json={"candidate": second_url},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert resp.status_code == 200 and resp.json()["candidate"] == second_url
        new_ids = _send(client, proxy, "ok", 3)
        wait_until(lambda: len(second.seen) == 3, "new calls on the new candidate")
        assert proxy.gauges()["tee_inflight"] == 3  # the old pool's calls still count
        up.cand.gate.open()  # the old candidate answers the calls it held
    status = _balanced(proxy, lambda: len(up.comp.pairs))
    assert status["counters"]["candidate_outcomes"]["ok"] == 6
    pairs = up.comp.by_id()
    assert {pairs[r].candidate.outcome.value for r in old_ids + new_ids} == {"ok"}
    assert len(up.cand.seen) == 3
