"""``shadowtee report`` on the command line: one line and exit 2 for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shadowtee.cli import main

from .conftest import Filled
from .gen import EXPERIMENT


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["report", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _args(filled: Filled, out: Path, **over: str) -> list[str]:
    opts = {
        "db": filled.url,
        "experiment": EXPERIMENT,
        "day": "2026-11-22",
        "out": str(out),
        **over,
    }
    return [x for k, v in opts.items() for x in (f"--{k}", v)]


def test_the_command_writes_three_files_and_prints_their_paths(
    filled: Filled, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = _run(capsys, *_args(filled, tmp_path))
    assert rc == 0, err
    assert out.split() == [str(tmp_path / n) for n in ("report.html", "report.json", "report.md")]
    assert json.loads((tmp_path / "report.json").read_text())["experiment"] == EXPERIMENT


@pytest.mark.parametrize(
    ("over", "names"),
    [
        ({"day": "2026-13-01"}, "--day"),
        ({"day": "22/11/2026"}, "--day"),
        ({"experiment": "no-such-experiment"}, "--experiment"),
        ({"tz": "Mars/Olympus"}, "--tz"),
        ({"db": "sqlite:////nonexistent/dir/db.sqlite"}, "--db"),
        ({"db": "nosuchdriver://x"}, "--db"),
        ({"policy": "/nonexistent/policy.toml"}, "--policy"),
    ],
)
def test_bad_input_is_one_line_naming_the_option_and_exit_2(
    filled: Filled,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    over: dict[str, str],
    names: str,
) -> None:
    rc, out, err = _run(capsys, *_args(filled, tmp_path / "out", **over))
    assert rc == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert names in err and "Traceback" not in err
    assert not (tmp_path / "out" / "report.html").exists()


def test_a_missing_option_is_named(
    filled: Filled, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _run(capsys, "--db", filled.url, "--day", "2026-11-22", "--out", str(tmp_path))
    assert rc == 2 and "--experiment" in err and len(err.strip().splitlines()) == 1
