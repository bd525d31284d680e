"""``shadowtee replay`` against real ``shadowtee serve`` processes with the committed golden set."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import GOLDEN, shadowtee

pytestmark = pytest.mark.timeout(120)


def _replay(
    servers: dict[str, str], candidate: str, *extra: str
) -> tuple[int, dict[str, Any], str]:
    cli = shadowtee(
        "replay",
        "--requests",
        str(GOLDEN),
        "--prod",
        servers["1"],
        "--candidate",
        servers[candidate],
        "--json",
        *extra,
        timeout=90,
    )
    assert cli.returncode in (0, 1, 3), cli.stderr
    return cli.returncode, json.loads(cli.stdout), cli.stderr


def _status(verdict: dict[str, Any], check_id: str) -> str:
    return next(str(c["status"]) for c in verdict["checks"] if c["id"] == check_id).upper()


@pytest.mark.slow
def test_replay_does_not_reject_the_good_candidate(digits_servers: dict[str, str]) -> None:
    code, verdict, _ = _replay(digits_servers, "2")
    assert str(verdict["decision"]).upper() != "REJECT", verdict["reasons"]
    assert code in (0, 3)
    assert _status(verdict, "top1_disagreement") != "FAIL"
    assert verdict["replay"]["pairs"] == 100


@pytest.mark.slow
def test_replay_rejects_the_bad_candidate_on_top1_disagreement(
    digits_servers: dict[str, str],
) -> None:
    code, verdict, _ = _replay(digits_servers, "3")
    assert code == 1
    assert str(verdict["decision"]).upper() == "REJECT"
    assert _status(verdict, "top1_disagreement") == "FAIL"
    assert any("top1_disagreement" in r for r in verdict["reasons"]), verdict["reasons"]


@pytest.mark.slow
def test_replay_stores_every_pair_in_the_given_database(
    digits_servers: dict[str, str], tmp_path: Path
) -> None:
    from comparator.store.store import Store

    db = f"sqlite:///{tmp_path / 'replay.sqlite'}"
    _replay(digits_servers, "3", "--db", db, "--experiment", "golden-v1-vs-v3")

    async def stored() -> tuple[int, dict[str, Any] | None]:
        store = await Store.open(db)
        try:
            info = await store.get_experiment("golden-v1-vs-v3")
            latest = await store.latest_verdict("golden-v1-vs-v3")
            return (info.n_pairs if info else 0), latest
        finally:
            await store.close()

    n_pairs, latest = asyncio.run(stored())
    assert n_pairs == 100
    assert latest is not None


def test_replay_names_a_missing_request_file_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    cli = shadowtee(
        "replay",
        "--requests",
        str(missing),
        "--prod",
        "http://127.0.0.1:9/x",
        "--candidate",
        "http://127.0.0.1:9/x",
    )
    assert cli.returncode == 2
    assert cli.stderr.strip().count("\n") == 0
    assert "--requests" in cli.stderr and str(missing) in cli.stderr


def test_replay_names_a_bad_url_in_one_line() -> None:
    cli = shadowtee(
        "replay",
        "--requests",
        str(GOLDEN),
        "--prod",
        "ftp://127.0.0.1/x",
        "--candidate",
        "http://127.0.0.1:9/x",
    )
    assert cli.returncode == 2
    assert cli.stderr.strip().count("\n") == 0
    assert "--prod" in cli.stderr


def test_replay_names_an_unreachable_side_in_one_line(digits_servers: dict[str, str]) -> None:
    from shadowtee.supervise import free_port

    closed = f"http://127.0.0.1:{free_port()}/v2/models/digits/infer"
    cli = shadowtee(
        "replay",
        "--requests",
        str(GOLDEN),
        "--prod",
        digits_servers["1"],
        "--candidate",
        closed,
    )
    assert cli.returncode == 2
    assert cli.stderr.strip().count("\n") == 0
    assert "--candidate" in cli.stderr and "cannot reach" in cli.stderr


def test_replay_names_the_line_of_a_malformed_request(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"inputs": []}\n\n[1, 2]\n', encoding="utf-8")
    cli = shadowtee(
        "replay",
        "--requests",
        str(bad),
        "--prod",
        "http://127.0.0.1:9/x",
        "--candidate",
        "http://127.0.0.1:9/x",
    )
    assert cli.returncode == 2
    assert cli.stderr.strip().count("\n") == 0
    assert f"{bad}:3" in cli.stderr
