"""The settings loader: flags over environment over TOML over defaults; one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shadowtee.config import ConfigError, load_settings


class DemoSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHADOWTEE_DEMOSECTION__", env_nested_delimiter="__"
    )
    timeout_ms: int = Field(default=250, gt=0)
    name: str = "default"


def test_defaults_when_nothing_is_given() -> None:
    s = load_settings(DemoSettings, section="demosection")
    assert (s.timeout_ms, s.name) == (250, "default")
    assert type(s) is DemoSettings


def test_flag_beats_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[demosection]\ntimeout_ms = 10\nname = "file"\n')
    assert load_settings(DemoSettings, section="demosection", config_file=cfg).timeout_ms == 10
    monkeypatch.setenv("SHADOWTEE_DEMOSECTION__TIMEOUT_MS", "20")
    s = load_settings(DemoSettings, section="demosection", config_file=cfg)
    assert (s.timeout_ms, s.name) == (20, "file")
    s = load_settings(
        DemoSettings,
        section="demosection",
        config_file=cfg,
        overrides={"timeout_ms": 30, "name": None},
    )
    assert (s.timeout_ms, s.name) == (30, "file")


def test_bad_value_names_flag_and_environment_variable() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(DemoSettings, section="demosection", overrides={"timeout_ms": -1})
    msg = str(err.value)
    assert "--timeout-ms" in msg and "SHADOWTEE_DEMOSECTION__TIMEOUT_MS" in msg
    assert "\n" not in msg


def test_missing_or_broken_config_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config: file not found"):
        load_settings(DemoSettings, section="demosection", config_file=tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(DemoSettings, section="demosection", config_file=bad)


def test_comparator_list_of_the_proxy_is_checked_url_by_url() -> None:
    from proxy.settings import ProxySettings

    base = {"prod": "http://127.0.0.1:1", "candidate": "http://127.0.0.1:2"}
    many = load_settings(
        ProxySettings,
        section="proxy",
        overrides=base | {"comparator": "http://a:8090/, http://b:8090"},
    )
    assert many.comparator_urls == ("http://a:8090", "http://b:8090")
    one = load_settings(ProxySettings, section="proxy", overrides=base | {"comparator": "http://a"})
    assert one.comparator_urls == ("http://a",)
    for bad, why in [
        ("http://a,,http://b", "empty URL"),
        ("http://a,ftp://b", "expected an http"),
        ("http://a,http://a/", "named twice"),
        ("http://A:8090,http://a:08090", "named twice"),
        ("http://u:hunter2@a:8090", "no user or password"),
        ("http://a:99999", "port"),
        ("http://a:8090?x=1", "no query"),
        ("http://a:8090#f", "no query"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_settings(ProxySettings, section="proxy", overrides=base | {"comparator": bad})
        assert "--comparator" in str(err.value) and why in str(err.value)
