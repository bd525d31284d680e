"""Promotion moves the production alias only after a PROMOTE (or a logged --force), atomically."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from comparator.judge.policy import DEMO_POLICY_PATH, load_policy
from comparator.judge.registry import RegistryError, promote, read_aliases
from comparator.judge.verdict import judge
from comparator.store.store import Store
from shadowtee.cli import main
from tests.comparator.verdict_fakes import START, wire_pair


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "aliases.json").write_text(
        json.dumps({"production": "1", "candidate": "2"})
    )
    return tmp_path


def test_promote_moves_production_to_the_candidate(registry: Path) -> None:
    p = promote(registry, "digits", decision="PROMOTE", expected_candidate="2")
    assert (p.previous, p.promoted, p.forced) == ("1", "2", False)
    assert read_aliases(registry, "digits") == {"production": "2", "candidate": "2"}
    assert [f.name for f in (registry / "digits").iterdir()] == [
        "aliases.json"
    ]  # no temp file left


@pytest.mark.parametrize("decision", ["REJECT", "KEEP_OBSERVING", None])
def test_promote_refuses_without_a_promote_verdict(registry: Path, decision: str | None) -> None:
    with pytest.raises(RegistryError, match="not PROMOTE"):
        promote(registry, "digits", decision=decision)
    assert read_aliases(registry, "digits")["production"] == "1"


def test_promote_refuses_when_the_candidate_alias_moved(registry: Path) -> None:
    with pytest.raises(RegistryError, match="judged version 3"):
        promote(registry, "digits", decision="PROMOTE", expected_candidate="3")


def test_promote_refuses_a_verdict_dated_in_the_future(registry: Path) -> None:
    now = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    with pytest.raises(RegistryError, match=r"dated 2099-01-01.*in the future"):
        promote(
            registry,
            "digits",
            decision="PROMOTE",
            judged_at=datetime(2099, 1, 1, tzinfo=UTC),
            now=now,
        )
    assert read_aliases(registry, "digits")["production"] == "1"
    # a few seconds of clock skew between machines is not the future
    p = promote(
        registry, "digits", decision="PROMOTE", judged_at=now + timedelta(seconds=30), now=now
    )
    assert p.promoted == "2" and not p.forced


def test_force_promotes_and_logs(registry: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="comparator.judge.registry"):
        p = promote(registry, "digits", decision="REJECT", force=True)
    assert p.forced and read_aliases(registry, "digits")["production"] == "2"
    assert any("FORCED" in r.message and "REJECT" in r.message for r in caplog.records)


def test_bad_alias_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no alias file"):
        read_aliases(tmp_path, "digits")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "aliases.json").write_text('{"production": 1}')
    with pytest.raises(RegistryError, match="must hold string"):
        read_aliases(tmp_path, "m")
    with pytest.raises(RegistryError, match="invalid model name"):
        read_aliases(tmp_path, "../etc")


async def _judged_db(url: str, *, bad: bool) -> None:
    store = await Store.open(url)
    try:
        await store.ingest(
            [wire_pair(i, "exp", cand_error=bad and i % 3 == 0) for i in range(1500)]
        )
        await judge(store, "exp", load_policy(DEMO_POLICY_PATH), START + timedelta(hours=2))
    finally:
        await store.close()


def test_promote_command_after_promote_verdict(
    registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    asyncio.run(_judged_db(url, bad=False))
    code = main(
        [
            "promote",
            "--db",
            url,
            "--experiment",
            "exp",
            "--registry",
            str(registry),
            "--model",
            "digits",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "production 1 → 2" in capsys.readouterr().out
    assert read_aliases(registry, "digits")["production"] == "2"


def test_promote_command_refuses_a_reject_unless_forced(
    registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    asyncio.run(_judged_db(url, bad=True))
    argv = [
        "promote",
        "--db",
        url,
        "--experiment",
        "exp",
        "--registry",
        str(registry),
        "--model",
        "digits",
    ]
    assert main(argv) == 1
    assert "REJECT, not PROMOTE" in capsys.readouterr().err
    assert read_aliases(registry, "digits")["production"] == "1"
    assert main([*argv, "--force"]) == 0
    assert "(forced)" in capsys.readouterr().out


def test_promote_command_usage_errors(
    registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    asyncio.run(_judged_db(url, bad=False))
    assert (
        main(
            [
                "promote",
                "--db",
                url,
                "--experiment",
                "nope",
                "--registry",
                str(registry),
                "--model",
                "digits",
            ]
        )
        == 2
    )
    assert "--experiment: no experiment named 'nope'" in capsys.readouterr().err
    assert (
        main(
            [
                "promote",
                "--db",
                url,
                "--experiment",
                "exp",
                "--registry",
                str(registry),
                "--model",
                "x",
            ]
        )
        == 2
    )
    assert "--registry: no alias file" in capsys.readouterr().err
