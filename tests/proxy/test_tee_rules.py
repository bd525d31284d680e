"""Route, method and sampling rules: pure logic."""

from __future__ import annotations

from proxy.settings import DEFAULT_TEE_ROUTES
from proxy.tee_rules import TeeRules


def test_default_routes() -> None:
    rules = TeeRules(DEFAULT_TEE_ROUTES, ["POST"], 1.0)
    assert rules.matches("POST", "/v2/models/digits/infer")
    assert rules.matches("POST", "/v1/models/digits:predict")
    assert rules.matches("POST", "/predict")
    assert rules.matches("POST", "/invocations")
    assert not rules.matches("GET", "/predict")
    assert not rules.matches("POST", "/v2/models/a/b/infer")  # * is one segment
    assert not rules.matches("POST", "/predictions")
    assert not rules.matches("POST", "/v2/models/digits/ready")


def test_sampling_rate_is_roughly_honoured() -> None:
    rules = TeeRules(["/p"], ["POST"], 0.1)
    hits = sum(rules.sampled(f"id-{i}") for i in range(10_000))
    assert 800 < hits < 1200


def test_sampling_is_a_pure_function_of_the_key() -> None:
    for rate in (0.0, 0.01, 0.3, 0.5, 0.99, 1.0):
        a, b = TeeRules(["/p"], ["POST"], rate), TeeRules(["/p"], ["POST"], rate)
        keys = [f"user-{i}" for i in range(500)] + ["", "é", "x" * 1000]
        picks = [a.sampled(k) for k in keys]
        assert picks == [b.sampled(k) for k in keys]
        if rate == 0.0:
            assert not any(picks)
        if rate == 1.0:
            assert all(picks)
