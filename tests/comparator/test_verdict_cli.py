"""``shadowtee verdict`` over a real SQLite store filled through ``Store.ingest``: exit codes 0/1/3/2."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from comparator.judge.decision import Decision
from comparator.judge.policy import DEMO_POLICY_PATH, load_policy
from comparator.judge.verdict import judge
from comparator.store.store import Store
from shadowtee.cli import main
from tests.comparator.verdict_fakes import START, wire_pair

LATE = (START + timedelta(hours=2)).isoformat()


async def _fill(url: str) -> None:
    store = await Store.open(url)
    try:
        await store.ingest([wire_pair(i, "good", cand_error=False) for i in range(1500)])
        await store.ingest([wire_pair(i, "bad", cand_error=i % 3 == 0) for i in range(1500)])
    finally:
        await store.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('verdict')}/store.db"
    asyncio.run(_fill(url))
    return url


def _cli(*argv: str) -> int:
    return main(["verdict", *argv])


def test_good_candidate_is_promoted_with_the_demo_policy(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _cli("--db", db, "--experiment", "good", "--policy", str(DEMO_POLICY_PATH), "--at", LATE)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "decision: PROMOTE" in out and "error_delta" in out


def test_bad_candidate_is_rejected_as_json(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = _cli(
        "--db", db, "--experiment", "bad", "--policy", str(DEMO_POLICY_PATH), "--at", LATE, "--json"
    )
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert doc["decision"] == "REJECT"
    assert any("error_delta" in r for r in doc["reasons"])


def test_default_policy_keeps_observing(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("--db", db, "--experiment", "good", "--at", LATE, "--no-save") == 3
    assert "KEEP_OBSERVING" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--at", "yesterday"], "--at: not an ISO 8601 time"),
        (["--experiment", "nope"], "--experiment: no experiment named 'nope'"),
        (["--policy", "/nonexistent/policy.toml"], "--policy:"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    db: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    base = {"--db": db, "--experiment": "good"}
    args = [a for k, v in base.items() if k not in argv for a in (k, v)] + argv
    assert _cli(*args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bad_policy_key_is_named(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "policy.toml"
    f.write_text("[checks.latency_p99]\nmargin = 0\n")
    assert _cli("--db", db, "--experiment", "good", "--policy", str(f)) == 2
    assert "policy.toml: checks.latency_p99.margin: must be > 0" in capsys.readouterr().err


def test_real_command_exit_status(db: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shadowtee",
            "verdict",
            "--db",
            db,
            "--experiment",
            "bad",
            "--policy",
            str(DEMO_POLICY_PATH),
            "--at",
            LATE,
            "--no-save",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "REJECT" in proc.stdout


async def test_judge_state_round_trips_through_the_real_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    store = await Store.open(url)
    try:
        await store.ingest([wire_pair(i, "rt", cand_error=False) for i in range(1500)])
        policy = load_policy(DEMO_POLICY_PATH)
        first = await judge(store, "rt", policy, START + timedelta(minutes=100))
        state = await store.load_verdict_state("rt")
        assert state is not None and state["n_opt"] == 1500 and state["intervals"]
        second = await judge(store, "rt", policy, START + timedelta(minutes=110))
        assert first.decision is second.decision is Decision.PROMOTE
        assert first.decision_changed and not second.decision_changed
        latest = await store.latest_verdict("rt")
        assert latest is not None and latest["decision"] == "PROMOTE"
    finally:
        await store.close()
