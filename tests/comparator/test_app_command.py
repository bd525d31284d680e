"""``shadowtee comparator`` as a real subprocess, and its settings from flags, env and TOML."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from comparator.settings import ComparatorSettings
from shadowtee.config import ConfigError, load_settings
from tests.comparator.store_support import make_pair
from tests.support.net import free_port as free_port


def shadowtee(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "shadowtee", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


async def test_comparator_serves_ingest_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = shadowtee(
        "comparator", "--listen", f"127.0.0.1:{port}", "--db", f"sqlite:///{tmp_path}/c.db",
        "--token", "tok",
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(200):  # up to ~20 s for the interpreter and the migration
                try:
                    async with http.get("/health/ready") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the comparator did not become ready")
            async with http.post(
                "/v1/pairs",
                json={"pairs": [make_pair(i, "cli") for i in range(4)]},
                headers={"Authorization": "Bearer tok"},
            ) as r:
                assert r.status == 200
                assert (await r.json())["inserted"] == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--listen", "nowhere"], {}, "--listen"),
        (["--db", "mysql://h/d"], {}, "--db"),
        (["--scrape", "gpu=http://127.0.0.1:1/metrics"], {}, "--scrape"),
        (["--scrape", "prod"], {}, "--scrape"),
        (["--workers", "0"], {}, "--workers"),
        (
            [],
            {"SHADOWTEE_COMPARATOR__MAX_BODY_BYTES": "ten"},
            "SHADOWTEE_COMPARATOR__MAX_BODY_BYTES",
        ),
        (["--policy", "/no/such/policy.toml"], {}, "--policy"),
    ],
)
def test_bad_configuration_stops_start_up_in_one_line(
    args: list[str], env: dict[str, str], needle: str, tmp_path: Path
) -> None:
    proc = shadowtee("comparator", "--db", f"sqlite:///{tmp_path}/x.db", *args, env=env)
    _out, err = proc.communicate(timeout=30)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2
    assert len(lines) == 1 and needle in lines[0], lines


def test_settings_merge_flags_env_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[comparator]\nlisten = "127.0.0.1:9999"\nwarmup_minutes = 10\n'
        '[comparator.experiments.digits]\ntask = "classification"\n'
        'output_pointer = "/outputs/0/data"\n'
    )
    monkeypatch.setenv("SHADOWTEE_COMPARATOR__STORE_REQUEST_BODIES", "true")
    monkeypatch.setenv("SHADOWTEE_COMPARATOR__TOKEN", "from-env")
    s = load_settings(
        ComparatorSettings,
        section="comparator",
        overrides={
            "listen": "127.0.0.1:7000",
            "scrape": {"candidate": "http://127.0.0.1:1/metrics"},
        },
        config_file=cfg,
    )
    assert s.listen == "127.0.0.1:7000"  # the flag wins over the file
    assert s.store_request_bodies is True
    assert s.token is not None and s.token.get_secret_value() == "from-env"
    assert "from-env" not in repr(s)
    assert s.scrape == {"cand": "http://127.0.0.1:1/metrics"}
    n = s.normalize_config("digits")
    assert (n.task, n.output_pointer, n.warmup_minutes) == (  # type: ignore[attr-defined]
        "classification",
        "/outputs/0/data",
        10,
    )
    assert s.normalize_config("other").task == "auto"  # type: ignore[attr-defined]


def test_settings_defaults_are_safe() -> None:
    s = ComparatorSettings()
    assert s.store_request_bodies is False
    assert s.token is None
    assert s.db.startswith("sqlite:///")


def test_a_bad_output_pointer_is_named() -> None:
    with pytest.raises(ConfigError, match="experiments"):
        load_settings(
            ComparatorSettings,
            section="comparator",
            overrides={"experiments": {"e": {"output_pointer": "outputs/0"}}},
        )


def test_latency_warm_up_follows_the_policy_unless_set(tmp_path: Path) -> None:
    from comparator.judge.policy import DEMO_POLICY_PATH, load_policy

    demo_warmup = load_policy(DEMO_POLICY_PATH).window.warmup_minutes
    s = ComparatorSettings(db=f"sqlite:///{tmp_path}/c.db", policy=str(DEMO_POLICY_PATH))
    n = s.normalize_config("x", policy_warmup_minutes=demo_warmup)
    assert n.warmup_minutes == demo_warmup  # type: ignore[attr-defined]
    pinned = ComparatorSettings(db=f"sqlite:///{tmp_path}/c.db", warmup_minutes=12)
    assert pinned.normalize_config("x", policy_warmup_minutes=demo_warmup).warmup_minutes == 12  # type: ignore[attr-defined]
