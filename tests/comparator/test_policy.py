"""Policy loading: the documented default, the demo policy, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from comparator.judge.policy import (
    CHECK_IDS,
    DEFAULT_POLICY_PATH,
    DEMO_POLICY_PATH,
    PolicyError,
    load_policy,
)


def test_default_policy_matches_verdict_md() -> None:
    p = load_policy(None)
    assert p.name == "default" and p.alpha == 0.05
    assert (p.window.min_hours, p.window.max_hours, p.window.warmup_minutes) == (24, 48, 30)
    assert (
        p.weights.reliability,
        p.weights.divergence,
        p.weights.latency,
        p.weights.resources,
    ) == (30, 40, 20, 10)
    assert set(p.checks) == set(CHECK_IDS)
    assert p.check("error_delta").margin == 0.001 and p.check("error_delta").critical
    assert p.check("latency_p99").margin == 1.20 and not p.check("latency_p50").critical
    assert p.check("top1_disagreement").noise_margin == 0.02


def test_default_file_is_documented() -> None:
    text = DEFAULT_POLICY_PATH.read_text()
    assert text.count("#") > 20


def test_demo_policy_is_named_demo_with_a_short_window() -> None:
    p = load_policy(DEMO_POLICY_PATH)
    assert "demo" in p.name
    assert p.window.min_hours <= 0.05 and p.window.warmup_minutes == 0 and p.minimums.units <= 500


def test_partial_file_overrides_the_default(tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text('name = "strict"\n[checks.latency_p99]\nmargin = 1.05\n')
    p = load_policy(f)
    assert p.name == "strict" and p.check("latency_p99").margin == 1.05
    assert p.check("latency_p99").critical and p.check("error_delta").margin == 0.001


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[checks.latency_p99]\nmargin = -1\n",
            "policy.toml: checks.latency_p99.margin: must be > 0",
        ),
        ("[checks.latency_p999]\nmargin = 1\n", "policy.toml: checks.latency_p999: unknown check"),
        ("alpha = 1.5\n", "policy.toml: alpha: must be < 1"),
        ("[window]\nmin_hours = 50\n", "policy.toml: window: max_hours: must be ≥ min_hours"),
        ("colour = 1\n", "policy.toml: colour: unknown key"),
        (
            "[weights]\nlatency = 'high'\n",
            "policy.toml: weights.latency: input should be a valid number",
        ),
        ("[checks.error_delta]\ncritical = 'maybe'\n", "policy.toml: checks.error_delta.critical:"),
        ("name = \n", "policy.toml: not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "policy.toml"
    f.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(f)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="file not found"):
        load_policy(tmp_path / "nope.toml")
