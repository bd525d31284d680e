"""Each check of VERDICT.md from a hand-built aggregate: status, interval and the readable reason."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest

from comparator.judge.checks import evaluate
from comparator.judge.policy import load_policy
from comparator.judge.results import CheckContext, CheckResult, Status, infer_task
from comparator.measure.aggregates import Aggregate, Moments, ddsketch_key, keys
from tests.comparator.verdict_fakes import T0, memory_series

POLICY = load_policy(None)


def _run(
    agg: Aggregate,
    task: str | None,
    memory: list | None = None,
    prior: dict | None = None,
    hours: float = 24.0,
) -> dict[str, CheckResult]:
    ctx = CheckContext(POLICY, task, 1e5, hours, T0, T0 + timedelta(hours=hours), prior or {})
    results, _ = evaluate(agg, memory or [], ctx)
    return {r.id: r for r in results}


def _paired(agg: Aggregate, name: str, n00: int, n01: int, n10: int, n11: int) -> None:
    for (a, b), c in zip(((0, 0), (0, 1), (1, 0), (1, 1)), (n00, n01, n10, n11), strict=True):
        agg.add(keys.paired(name, bool(a), bool(b)), c)


def test_paired_error_example_from_verdict_md_fails_with_reason() -> None:
    agg = Aggregate()
    _paired(agg, keys.ERROR, 99000, 650, 300, 50)
    r = _run(agg, None)["error_delta"]
    assert r.status is Status.FAIL
    assert r.reason.startswith("error rate Δ 0.0035 [") and r.reason.endswith("> 0.001")
    assert r.lower is not None and r.lower > 0.001


def test_every_check_has_a_result() -> None:
    assert len(_run(Aggregate(), None)) == 17


def test_task_is_inferred_from_counters() -> None:
    agg = Aggregate()
    agg.add(keys.REG_N, 5)
    assert infer_task(agg, None) == "regression"
    assert infer_task(agg, "ranking") == "ranking"
    assert infer_task(Aggregate(), None) is None


def test_twin_noise_floor_judges_the_excess() -> None:
    agg = Aggregate()
    agg.add(keys.CLS_N, 100_000)
    agg.add(keys.CLS_AGREE, 92_000)  # 8% disagreement > 5% …
    agg.add(keys.TWIN_CLS_N, 50_000)
    agg.add(
        keys.TWIN_CLS_AGREE, 46_250
    )  # … but production disagrees with its twin 7.5% of the time
    r = _run(agg, "classification")["top1_disagreement"]
    assert r.status is Status.PASS, r.reason
    assert "the excess over the twin is within its margin" in r.reason
    assert "(unpaired)" in r.reason  # no paired cells in this aggregate: the fallback


def test_top1_disagreement_without_twin_fails_above_margin() -> None:
    agg = Aggregate()
    agg.add(keys.CLS_N, 100_000)
    agg.add(keys.CLS_AGREE, 92_000)
    r = _run(agg, "classification")["top1_disagreement"]
    assert r.status is Status.FAIL and r.estimate == pytest.approx(0.08)


@pytest.mark.parametrize(
    ("cand", "status"),
    [
        ([500, 300, 150, 50], Status.PASS),
        ([350, 300, 250, 100], Status.WARN),
        ([100, 200, 300, 400], Status.FAIL),
    ],
)
def test_class_psi_bands(cand: list[int], status: Status) -> None:
    agg = Aggregate()
    agg.add_cats(keys.CLASS_PROD, {str(i): c * 10 for i, c in enumerate([500, 300, 150, 50])})
    agg.add_cats(keys.CLASS_CAND, {str(i): c * 10 for i, c in enumerate(cand)})
    assert _run(agg, "classification")["class_psi"].status is status


def test_class_psi_needs_200_per_bin() -> None:
    agg = Aggregate()
    agg.add_cats(keys.CLASS_PROD, {str(i): 100 for i in range(20)})  # 2000 < 200·19
    agg.add_cats(keys.CLASS_CAND, {str(i): 100 for i in range(20)})
    r = _run(agg, "classification")["class_psi"]
    assert r.status is Status.NODATA and "3800" in r.reason


@pytest.mark.parametrize(
    ("mean", "status"), [(0.0, Status.PASS), (0.5, Status.FAIL), (0.099, Status.INCONCLUSIVE)]
)
def test_reg_bias_is_two_sided(mean: float, status: Status) -> None:
    agg = Aggregate()
    agg.add_moments(keys.REG_DIFF, Moments(50_000, mean, 50_000 * 0.01))
    agg.add_moments(keys.REG_PROD, Moments(50_000, 3.0, 50_000 * 1.0))
    assert _run(agg, "regression")["reg_bias"].status is status


def test_regression_constant_values_pass() -> None:
    agg = Aggregate()
    agg.add_moments(keys.REG_DIFF, Moments(5000, 0.0, 0.0))
    agg.add_moments(keys.REG_PROD, Moments(5000, 2.0, 0.0))
    agg.add(keys.REG_N, 5000)
    r = _run(agg, "regression")
    assert r["reg_bias"].status is Status.PASS
    assert r["reg_tolerance"].status is Status.PASS


def test_embedding_and_ranking_checks() -> None:
    agg = Aggregate()
    agg.add(keys.EMB_N, 50_000)
    agg.add(keys.EMB_COS_TAIL, 5_000)
    assert _run(agg, "embedding")["emb_cosine_tail"].status is Status.FAIL
    agg = Aggregate()
    agg.add_moments(keys.RANK_RBO_LOSS, Moments(50_000, 0.05, 50_000 * 0.01))
    assert _run(agg, "ranking")["rank_rbo"].status is Status.PASS


def test_nan_outputs_counted_as_invalid_fail() -> None:
    agg = Aggregate()
    _paired(agg, keys.INVALID, 99_000, 1_000, 0, 0)  # candidate emits NaN on 1% of requests
    assert _run(agg, None)["invalid_delta"].status is Status.FAIL


def test_latency_within_5ms_passes_whatever_the_ratio() -> None:
    agg = Aggregate()
    agg.add_hist(keys.latency("prod"), {ddsketch_key(1.0): 10_000})
    agg.add_hist(keys.latency("cand"), {ddsketch_key(2.0): 10_000})  # 2× slower, 1 ms more
    r = _run(agg, None)["latency_p50"]
    assert (
        r.status is Status.PASS
        and "difference" in r.reason
        and r.estimate == pytest.approx(2.0, rel=0.03)
    )


def test_all_timeouts_fail_latency() -> None:
    agg = Aggregate()
    agg.add_hist(keys.latency("prod"), {ddsketch_key(50.0): 10_000})
    agg.add_hist(keys.latency("cand"), {ddsketch_key(50.0): 20})
    agg.add(keys.censored("cand"), 9_980)
    agg.add_moments("lat.cand.deadline", Moments(9_980, 500.0, 0.0))
    r = _run(agg, None)["latency_p50"]
    assert r.status is Status.FAIL and "among timeouts" in r.reason


def test_prior_interval_is_intersected() -> None:
    agg = Aggregate()
    _paired(agg, keys.ERROR, 9_900, 60, 40, 0)
    alone = _run(agg, None)["error_delta"]
    assert alone.status is Status.INCONCLUSIVE and alone.eta_hours is not None
    r = _run(agg, None, prior={"error_delta": [-0.0005, 0.0008]})["error_delta"]
    assert r.status is Status.PASS and r.upper == 0.0008


def test_memory_checks() -> None:
    mem = memory_series("prod", 25, 1000, 0, 4000) + memory_series("cand", 25, 1500, 0, 4000)
    r = _run(Aggregate(), None, mem, hours=25)
    assert r["memory_steady"].status is Status.FAIL  # 1.5× and +500 MiB
    assert r["memory_headroom"].status is Status.PASS
    leak = r["memory_leak"]
    assert leak.status is Status.PASS and "not reached in 168 h" in leak.reason
    assert leak.lower is not None and leak.upper is not None and leak.lower <= 0 <= leak.upper
    mem = memory_series("prod", 25, 1000, 0, 1200) + memory_series("cand", 25, 1100, 0, 1200)
    r = _run(Aggregate(), None, mem, hours=25)
    assert r["memory_steady"].status is Status.PASS  # Δ 100 MiB ≤ 256 MiB
    assert r["memory_headroom"].status is Status.FAIL  # 92% of the limit


def test_memory_steady_needs_enough_hours_for_its_interval() -> None:
    mem = memory_series("prod", 6, 1000, 0, 4000) + memory_series("cand", 6, 1500, 0, 4000)
    r = _run(Aggregate(), None, mem, hours=6)
    # six hourly medians bound a median only loosely: not decided yet, and not critical
    assert r["memory_steady"].status is Status.INCONCLUSIVE
    assert r["memory_headroom"].status is Status.INCONCLUSIVE  # a peak within margin "so far"
    mem = memory_series("prod", 1, 1000, 0, 4000) + memory_series("cand", 1, 1500, 0, 4000)
    assert _run(Aggregate(), None, mem, hours=1)["memory_steady"].status is Status.NODATA


def test_memory_sources_configured_but_silent_is_nodata_naming_the_side() -> None:
    mem = memory_series("prod", 6, 1000, 0, 4000)
    ctx = CheckContext(
        POLICY, None, 1e5, 6.0, T0, T0 + timedelta(hours=6), {}, frozenset({"prod", "cand"})
    )
    r = {c.id: c for c in evaluate(Aggregate(), mem, ctx)[0]}
    for cid in ("memory_steady", "memory_headroom", "memory_leak"):
        assert r[cid].status is Status.NODATA and "cand configured" in r[cid].reason
    ctx = CheckContext(POLICY, None, 1e5, 6.0, T0, T0 + timedelta(hours=6), {}, frozenset())
    r = {c.id: c for c in evaluate(Aggregate(), [], ctx)[0]}
    assert r["memory_leak"].status is Status.NA
    assert r["memory_leak"].reason == "no scrape target configured"


def test_leak_interval_is_at_the_checks_alpha() -> None:
    """The slope's interval is Theil–Sen's at 1 − α of the check, not a fixed 95%."""
    rng = np.random.default_rng(3)
    mib = 1024.0 * 1024.0
    cand = [
        replace(s, value_bytes=s.value_bytes + rng.normal(0, 12) * mib)
        for s in memory_series("cand", 12, 1000, 10, 3000)
    ]
    mem = memory_series("prod", 12, 1000, 0, 3000) + cand
    critical = _run(Aggregate(), None, mem, hours=12)["memory_leak"]  # α = 0.05 / 9
    checks = {
        **POLICY.checks,
        "memory_leak": POLICY.check("memory_leak").model_copy(update={"critical": False}),
    }
    loose = POLICY.model_copy(update={"checks": checks})  # non-critical: α = 0.05
    ctx = CheckContext(loose, None, 1e5, 12.0, T0, T0 + timedelta(hours=12))
    plain = {c.id: c for c in evaluate(Aggregate(), mem, ctx)[0]}["memory_leak"]
    assert critical.lower is not None and critical.upper is not None
    assert plain.lower is not None and plain.upper is not None
    assert critical.lower < plain.lower <= plain.upper < critical.upper


def test_memory_without_samples_or_limit_is_na() -> None:
    assert _run(Aggregate(), None)["memory_leak"].status is Status.NA
    mem = memory_series("cand", 6, 1000, 5, None) + memory_series("prod", 6, 1000, 0, None)
    r = _run(Aggregate(), None, mem, hours=6)
    assert r["memory_headroom"].status is Status.NA and r["memory_leak"].status is Status.NA


def test_memory_excludes_warmup() -> None:
    mem = memory_series("prod", 2, 1000, 0, 4000) + memory_series("cand", 2, 1000, 0, 4000)
    mem += memory_series("cand", 1, 3900, 0, 4000)[:3]  # a spike in the first 30 minutes
    r = _run(Aggregate(), None, mem, hours=2)
    assert r["memory_headroom"].status is Status.INCONCLUSIVE
    assert r["memory_headroom"].estimate == pytest.approx(0.25)  # the spike is left out


def test_nan_moments_are_nodata_not_a_verdict() -> None:
    agg = Aggregate()
    agg.add_moments(keys.RANK_RBO_LOSS, Moments(5000, float("nan"), 0.0))
    r = _run(agg, "ranking")["rank_rbo"]
    assert r.status is Status.NODATA and "no finite estimate" in r.reason


def test_twin_excess_interval_is_stored_under_its_own_key() -> None:
    agg = Aggregate()
    agg.add(keys.CLS_N, 100_000)
    agg.add(keys.CLS_AGREE, 92_000)
    agg.add(keys.TWIN_CLS_N, 50_000)
    agg.add(keys.TWIN_CLS_AGREE, 46_250)
    ctx = CheckContext(POLICY, "classification", 1e5, 24.0, T0, T0 + timedelta(hours=24))
    _, intervals = evaluate(agg, [], ctx)
    # the share and the excess are two statistics: each keeps its own running interval
    assert intervals["top1_disagreement.excess"][1] < intervals["top1_disagreement"][0]


def test_js_tail_counts_only_pairs_with_probability_vectors_on_both_sides() -> None:
    """Label-only pairs have no JS distance: they are not in js_tail's denominator."""
    agg = Aggregate()
    agg.add(keys.CLS_N, 100_000)  # 90 000 of them label-only
    agg.add(keys.CLS_AGREE, 99_000)
    agg.add_moments(keys.JS, Moments(10_000, 0.05, 10_000 * 0.01))
    agg.add(keys.JS_TAIL, 800)  # 8% of the pairs with vectors (0.8% of all pairs)
    r = _run(agg, "classification")["js_tail"]
    assert r.status is Status.FAIL and r.n == 10_000
    assert r.estimate == pytest.approx(0.08)


def test_no_output_read_is_a_coverage_fail_never_a_pass() -> None:
    agg = Aggregate()
    _paired(agg, keys.INVALID, 0, 0, 0, 50_000)  # both sides answered, nothing readable
    results = _run(agg, None)
    assert results["coverage"].status is Status.FAIL
    assert results["coverage"].reason.startswith("outputs compared 0.0000 [")
    assert results["top1_disagreement"].status is Status.NA  # no task: the divergence checks


def test_an_interval_that_stops_overlapping_is_reported_not_silently_kept() -> None:
    agg = Aggregate()
    _paired(agg, keys.ERROR, 99_000, 100, 100, 0)  # Δ 0 now …
    r = _run(agg, None, prior={"error_delta": [0.004, 0.006]})["error_delta"]  # … 0.5% before
    assert (r.lower, r.upper) == (0.004, 0.006) and r.status is Status.FAIL
    assert "DEFECT: this look's interval [" in r.reason
    assert "does not overlap the stored [0.004, 0.006]: the data changed" in r.reason
