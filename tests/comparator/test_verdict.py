"""The decision layer: each branch of the rule, repeated looks, planted regressions, A/A safety."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from comparator.exceptions import UnknownExperiment
from comparator.judge.decision import Decision, credit, decide, score
from comparator.judge.policy import load_policy
from comparator.judge.results import CheckResult, Status
from comparator.judge.verdict import judge
from comparator.measure.aggregates import Aggregate, keys
from comparator.store.store import Store
from tests.comparator.verdict_fakes import (
    START,
    T0,
    FakeStore,
    Scenario,
    fill,
    memory_series,
    wire_pair,
)

POLICY = load_policy(None)


def _check(
    cid: str, status: Status, *, critical: bool = True, group: str = "reliability"
) -> CheckResult:
    return CheckResult(
        cid, group, critical, status, 0.0, 0.0, 0.0, 0.001, 5000, f"{cid} is {status}", 2.0
    )


def _all_pass() -> list[CheckResult]:
    return [
        _check("error_delta", Status.PASS),
        _check("top1_disagreement", Status.PASS, group="divergence"),
        _check("latency_p99", Status.PASS, group="latency"),
        _check("memory_headroom", Status.NA, group="resources"),
    ]


# -- the rule, branch by branch ----------------------------------------------------------------
def test_critical_fail_after_one_hour_rejects_early_naming_the_check() -> None:
    checks = [*_all_pass()[1:], _check("error_delta", Status.FAIL)]
    decision, _, reasons = decide(checks, 1.5, POLICY)
    assert decision is Decision.REJECT
    assert "error_delta" in reasons[0]


def test_critical_fail_in_the_first_hour_keeps_observing() -> None:
    checks = [*_all_pass()[1:], _check("error_delta", Status.FAIL)]
    assert decide(checks, 0.5, POLICY)[0] is Decision.KEEP_OBSERVING


def test_before_min_window_keeps_observing_even_if_all_pass() -> None:
    decision, s, reasons = decide(_all_pass(), 23.9, POLICY)
    assert decision is Decision.KEEP_OBSERVING and s == 100.0
    assert "window" in reasons[0]


def test_critical_nodata_keeps_observing_with_eta_then_rejects_at_max_naming_it() -> None:
    checks = [*_all_pass(), _check("latency_p95", Status.NODATA, group="latency")]
    decision, _, reasons = decide(checks, 30.0, POLICY)
    assert decision is Decision.KEEP_OBSERVING
    assert any("latency_p95" in r and "2.0 h" in r for r in reasons)
    decision, _, reasons = decide(checks, 48.0, POLICY)
    assert decision is Decision.REJECT
    assert reasons[0].startswith("no data at the maximum window") and "latency_p95" in reasons[0]


def test_non_critical_nodata_blocks_nothing() -> None:
    checks = [*_all_pass(), _check("memory_steady", Status.NODATA, critical=False)]
    decision, s, _ = decide(checks, 24.0, POLICY)
    assert decision is Decision.PROMOTE and s == 100.0


def test_a_check_without_a_source_is_named_in_the_reasons() -> None:
    checks = [
        *_all_pass(),
        CheckResult(
            "memory_leak", "resources", True, Status.NA, None, None, None, 168.0, 0,
            "no scrape target configured", None,
        ),
    ]  # fmt: skip
    decision, _, reasons = decide(checks, 24.0, POLICY)
    assert decision is Decision.PROMOTE
    assert "not judged: memory_leak (no scrape target configured)" in reasons


def test_all_critical_pass_and_high_score_promotes() -> None:
    assert decide(_all_pass(), 24.0, POLICY)[0] is Decision.PROMOTE


def test_low_score_without_inconclusive_rejects() -> None:
    checks = [
        _check("error_delta", Status.PASS),
        _check("js_tail", Status.FAIL, critical=False, group="divergence"),
        _check("class_psi", Status.FAIL, critical=False, group="divergence"),
        _check("latency_p50", Status.FAIL, critical=False, group="latency"),
    ]
    decision, s, reasons = decide(checks, 24.0, POLICY)
    assert decision is Decision.REJECT and s < 75
    assert reasons[0].startswith("low score")


def test_inconclusive_before_max_window_keeps_observing() -> None:
    checks = [*_all_pass()[1:], _check("error_delta", Status.INCONCLUSIVE)]
    assert decide(checks, 30.0, POLICY)[0] is Decision.KEEP_OBSERVING


def test_inconclusive_at_max_window_rejects() -> None:
    checks = [*_all_pass()[1:], _check("error_delta", Status.INCONCLUSIVE)]
    decision, _, reasons = decide(checks, 48.0, POLICY)
    assert decision is Decision.REJECT
    assert "maximum window" in reasons[0]


def test_mid_score_with_warn_keeps_observing_then_rejects_at_max() -> None:
    checks = [*_all_pass(), _check("class_psi", Status.WARN, critical=False, group="divergence")]
    # score = (30·1 + 40·0.75 + 20·1) / 90 ≈ 88.9: neither promote nor low score
    assert 75 < score(checks, POLICY) < 90
    assert decide(checks, 30.0, POLICY)[0] is Decision.KEEP_OBSERVING
    assert decide(checks, 48.0, POLICY)[0] is Decision.REJECT


def test_credit_covers_every_status() -> None:
    assert [credit(s) for s in Status] == [1.0, 0.5, 0.0, 0.0, 0.0, None]


# -- judge over a store ------------------------------------------------------------------------
async def test_aa_experiment_keeps_observing_then_promotes_at_24h() -> None:
    store = FakeStore()
    store.add("aa")
    fill(store, "aa", np.random.default_rng(11), Scenario(), 25)
    for h in range(1, 24):
        v = await judge(store, "aa", POLICY, T0 + timedelta(hours=h))
        assert v.decision is Decision.KEEP_OBSERVING, (h, v.reasons)
    v = await judge(store, "aa", POLICY, T0 + timedelta(hours=24))
    assert v.decision is Decision.PROMOTE, v.reasons
    assert v.score >= 90
    assert store.states["aa"]["n_opt_frozen"] is True
    assert v.to_json()["decision"] == "PROMOTE"


@pytest.mark.parametrize(
    ("scenario", "check_id"),
    [
        (Scenario(cand_error_extra=0.005), "error_delta"),
        (Scenario(disagree=0.07), "top1_disagreement"),
        (Scenario(cand_latency_factor=1.5), "latency_p99"),
    ],
)
async def test_planted_regression_is_rejected_naming_the_check(
    scenario: Scenario, check_id: str
) -> None:
    store = FakeStore()
    store.add("bad")
    fill(store, "bad", np.random.default_rng(3), scenario, 48)
    for h in range(1, 49):
        v = await judge(store, "bad", POLICY, T0 + timedelta(hours=h))
        if v.decision is Decision.REJECT:
            break
    assert v.decision is Decision.REJECT
    assert v.check(check_id).status is Status.FAIL
    assert any(check_id in r for r in v.reasons)


async def test_memory_leak_reaching_the_limit_in_three_days_is_rejected() -> None:
    store = FakeStore()
    store.add("leak")
    fill(store, "leak", np.random.default_rng(5), Scenario(), 12)
    # 1000 MiB used of 2000 MiB, growing ~14 MiB/h: the limit in ~72 h < 168 h
    store.memory["leak"] = memory_series("cand", 12, 1000, 1000 / 72, 2000) + memory_series(
        "prod", 12, 1000, 0, 2000
    )
    v = await judge(store, "leak", POLICY, T0 + timedelta(hours=12))
    assert v.decision is Decision.REJECT
    assert v.check("memory_leak").status is Status.FAIL
    assert v.check("memory_headroom").status is Status.INCONCLUSIVE  # 58% so far, judged at 24 h


async def test_censored_timeouts_fail_p99_although_completed_calls_match() -> None:
    store = FakeStore()
    store.add("slow")
    fill(store, "slow", np.random.default_rng(9), Scenario(p_timeout=0.0), 3)
    for _, agg in store.hours["slow"]:  # 3% of candidate calls time out at 1 s
        agg.add(keys.censored("cand"), 600)
        agg.moments["lat.cand.deadline"] = replace(
            agg.moment("lat.prod.deadline"), n=600, mean=1000.0
        )
    v = await judge(store, "slow", POLICY, T0 + timedelta(hours=3))
    p99 = v.check("latency_p99")
    assert p99.status is Status.FAIL, p99.reason
    assert "among timeouts" in p99.reason
    assert v.check("latency_p50").status is Status.PASS


async def test_below_minimums_is_nodata_with_eta() -> None:
    store = FakeStore()
    store.add("tiny")
    fill(store, "tiny", np.random.default_rng(1), Scenario(pairs_per_hour=300), 2)
    v = await judge(store, "tiny", POLICY, T0 + timedelta(hours=2))
    err = v.check("error_delta")
    assert err.status is Status.NODATA
    assert err.eta_hours == pytest.approx((1000 - 600) / 300)
    assert v.decision is Decision.KEEP_OBSERVING


async def test_no_data_at_all_keeps_observing() -> None:
    store = FakeStore()
    store.add("empty", task=None)
    v = await judge(store, "empty", POLICY, T0 + timedelta(hours=30))
    assert v.decision is Decision.KEEP_OBSERVING
    assert v.check("error_delta").status is Status.NODATA
    assert v.check("top1_disagreement").status is Status.NA


async def test_one_side_without_latencies_is_nodata() -> None:
    store = FakeStore()
    store.add("oneside")
    fill(store, "oneside", np.random.default_rng(2), Scenario(), 2)
    for _, agg in store.hours["oneside"]:
        agg.hists.pop(keys.latency("cand"))
        agg.counters.pop(keys.censored("cand"), None)
    v = await judge(store, "oneside", POLICY, T0 + timedelta(hours=2))
    assert v.check("latency_p99").status is Status.NODATA


async def test_status_never_flips_back_across_looks() -> None:
    """A PASS stays PASS although a later look's own CS alone would be inconclusive."""
    store = FakeStore()
    store.add("flip")
    fill(store, "flip", np.random.default_rng(4), Scenario(), 24)
    v1 = await judge(store, "flip", POLICY, T0 + timedelta(hours=24))
    assert v1.check("error_delta").status is Status.PASS
    bad = Aggregate()  # an hour where the candidate fails much more often
    bad.add(keys.paired(keys.ERROR, False, True), 2000)
    bad.add(keys.paired(keys.ERROR, False, False), 18000)
    store.hours["flip"].append((T0 + timedelta(hours=24), bad))
    fresh = await judge(
        FakeStore(**{**store.__dict__, "states": {}, "verdicts": []}),
        "flip",
        POLICY,
        T0 + timedelta(hours=25),
        save=False,
    )
    assert fresh.check("error_delta").status is not Status.PASS
    v2 = await judge(store, "flip", POLICY, T0 + timedelta(hours=25))
    assert v2.check("error_delta").status is Status.PASS
    assert v2.check("error_delta").upper <= v1.check("error_delta").upper


async def test_look_into_the_past_is_not_saved() -> None:
    store = FakeStore()
    store.add("past")
    fill(store, "past", np.random.default_rng(6), Scenario(), 5)
    await judge(store, "past", POLICY, T0 + timedelta(hours=5))
    await judge(store, "past", POLICY, T0 + timedelta(hours=2))
    await judge(store, "past", POLICY, T0 + timedelta(hours=3), save=False)
    assert [v[1] for v in store.verdicts] == [T0 + timedelta(hours=5)]


async def test_decision_changed_is_reported_once() -> None:
    store = FakeStore()
    store.add("chg")
    fill(store, "chg", np.random.default_rng(8), Scenario(), 2)
    first = await judge(store, "chg", POLICY, T0 + timedelta(hours=1))
    second = await judge(store, "chg", POLICY, T0 + timedelta(hours=2))
    assert first.decision_changed and not second.decision_changed


async def test_unknown_experiment_raises() -> None:
    with pytest.raises(UnknownExperiment, match="nope"):
        await judge(FakeStore(), "nope", POLICY)


async def test_policy_n_opt_override_is_used_and_recorded() -> None:
    store = FakeStore()
    store.add("fixed")
    fill(store, "fixed", np.random.default_rng(8), Scenario(), 2)
    policy = POLICY.model_copy(update={"n_opt": 12345.0})
    v = await judge(store, "fixed", policy, T0 + timedelta(hours=2))
    assert v.n_opt == 12345.0 and store.states["fixed"]["n_opt_source"] == "policy"


# -- monotone in time ----------------------------------------------------------------------------
async def test_a_reject_is_final_whatever_later_data_shows() -> None:
    store = FakeStore()
    store.add("rej")
    fill(store, "rej", np.random.default_rng(3), Scenario(cand_error_extra=0.01), 3)
    first = await judge(store, "rej", POLICY, T0 + timedelta(hours=3))
    assert first.decision is Decision.REJECT
    # a flood of clean hours: today's looks alone would no longer fail the error check
    fill(store, "rej", np.random.default_rng(4), Scenario(pairs_per_hour=200_000), 30)
    later = await judge(store, "rej", POLICY, T0 + timedelta(hours=33))
    assert later.decision is Decision.REJECT
    assert later.reasons[0].startswith(f"rejected at {first.at.isoformat()}")
    assert any("error_delta" in r for r in later.reasons[1:])


async def test_a_decided_status_stays_and_a_contrary_look_is_reported_as_a_defect() -> None:
    store = FakeStore()
    store.add("mem")
    fill(store, "mem", np.random.default_rng(5), Scenario(), 26)
    store.memory["mem"] = memory_series("cand", 25, 1000, 0, 2000) + memory_series(
        "prod", 25, 1000, 0, 2000
    )
    v = await judge(store, "mem", POLICY, T0 + timedelta(hours=25))
    assert v.check("memory_headroom").status is Status.PASS
    # then the candidate's peak reaches 95% of its limit
    store.memory["mem"] += memory_series("cand", 1, 1900, 0, 2000, T0 + timedelta(hours=25))
    v = await judge(store, "mem", POLICY, T0 + timedelta(hours=26))
    head = v.check("memory_headroom")
    assert head.status is Status.PASS
    assert "DEFECT: this look computes FAIL" in head.reason and "95%" in head.reason


async def test_saves_are_monotone_in_time_in_the_store(tmp_path: Path) -> None:
    """Two looks racing: the older one, saved last, must not overwrite the newer state."""
    async with await Store.open(f"sqlite:///{tmp_path / 'v.sqlite'}") as store:
        await store.ingest([wire_pair(0, "race", cand_error=False)])
        t5, t3 = START + timedelta(hours=5), START + timedelta(hours=3)
        assert await store.save_verdict("race", t5, "REJECT", {"n": 5}, {"at": t5.isoformat()})
        assert not await store.save_verdict("race", t3, "PROMOTE", {"n": 3}, {"at": t3.isoformat()})
        state = await store.load_verdict_state("race")
        assert state is not None and state["at"] == t5.isoformat()
        assert (await store.latest_verdict("race")) == {"n": 5}


async def test_a_silent_scrape_target_blocks_promote_and_rejects_at_the_maximum_window() -> None:
    store = FakeStore()
    store.add("silent")
    fill(store, "silent", np.random.default_rng(12), Scenario(), 48)
    sides = frozenset({"prod", "cand"})
    v = await judge(store, "silent", POLICY, T0 + timedelta(hours=30), memory_sources=sides)
    assert v.decision is Decision.KEEP_OBSERVING
    assert v.check("memory_leak").status is Status.NODATA
    assert "cand, prod configured but yielded no memory samples" in v.check("memory_leak").reason
    # the sources are kept in the state: a look that does not know them (the CLI) still sees them
    v = await judge(store, "silent", POLICY, T0 + timedelta(hours=48))
    assert v.decision is Decision.REJECT
    assert "memory_headroom" in v.reasons[0] and "memory_leak" in v.reasons[0]


async def test_no_scrape_target_is_na_named_and_does_not_block() -> None:
    store = FakeStore()
    store.add("noscrape")
    fill(store, "noscrape", np.random.default_rng(13), Scenario(), 25)
    v = await judge(store, "noscrape", POLICY, T0 + timedelta(hours=24), memory_sources=frozenset())
    assert v.decision is Decision.PROMOTE, v.reasons
    assert "not judged: memory_leak (no scrape target configured)" in v.reasons


async def test_a_state_dated_in_the_future_is_neither_trusted_nor_blocking(tmp_path: Path) -> None:
    """A state a forged future look stored (before GET …/verdict became read-only) must not stick."""
    async with await Store.open(f"sqlite:///{tmp_path / 'f.sqlite'}") as store:
        await store.ingest([wire_pair(0, "forged", cand_error=False)])
        future = datetime(2099, 1, 1, tzinfo=UTC)
        assert await store.save_verdict(
            "forged", future, "PROMOTE", {"n": 0}, {"at": future.isoformat()}
        )
        assert await store.load_verdict_state("forged") is None
        t1 = START + timedelta(hours=1)
        assert await store.save_verdict(
            "forged", t1, "KEEP_OBSERVING", {"n": 1}, {"at": t1.isoformat()}
        )
        state = await store.load_verdict_state("forged")
        assert state is not None and state["at"] == t1.isoformat()
        assert (await store.latest_verdict("forged")) == {"n": 1}
