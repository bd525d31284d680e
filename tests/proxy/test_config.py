"""``shadowtee proxy`` configuration: flags, environment, TOML, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.settings import ProxySettings
from shadowtee.config import ConfigError, load_settings


def _load(config: Path | None = None, **flags: object) -> ProxySettings:
    return load_settings(ProxySettings, section="proxy", overrides=flags, config_file=config)


def test_flags_beat_environment_beat_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "shadowtee.toml"
    cfg.write_text(
        '[proxy]\nprod = "http://p:1"\ncandidate = "http://c:2"\nmax_inflight = 7\n'
        'sample_rate = 0.25\ntee_routes = ["/score"]\n'
    )
    monkeypatch.setenv("SHADOWTEE_PROXY__MAX_INFLIGHT", "9")
    s = _load(cfg, sample_rate="0.5")
    assert (s.prod, s.candidate, s.max_inflight, s.sample_rate) == (
        "http://p:1",
        "http://c:2",
        9,
        0.5,
    )
    assert s.tee_routes == ("/score",)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ({"prod": "http://p", "candidate": "http://c", "max_inflight": "0"}, "--max-inflight"),
        ({"prod": "http://p", "candidate": "http://c", "listen": "nonsense"}, "--listen"),
        ({"prod": "p:80", "candidate": "http://c"}, "--prod"),
        ({"prod": "http://p", "candidate": "http://c", "experiment": "bad name!"}, "--experiment"),
        ({"candidate": "http://c"}, "--prod"),
        (
            {"prod": "http://p", "candidate": "http://c", "max_tee_bytes": str(4 << 20)},
            "max_tee_bytes .* is below what one teed request may hold",
        ),
    ],
)
def test_bad_values_name_the_option(flags: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        _load(None, **flags)


def test_cli_prints_one_line_and_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shadowtee", "proxy", "--prod", "http://p", "--candidate", "http://c",
         "--shadow-timeout-ms", "-5"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--shadow-timeout-ms" in lines[0] and "Traceback" not in proc.stderr


def test_unusable_spool_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = subprocess.run(
        [sys.executable, "-m", "shadowtee", "proxy", "--prod", "http://127.0.0.1:9", "--candidate",
         "http://127.0.0.1:9", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30, check=False,
        env={"SHADOWTEE_PROXY__SPOOL_DIR": str(blocker / "spool"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "spool directory" in proc.stderr and "Traceback" not in proc.stderr
