"""Monotone statuses (VERDICT.md): once decided, a check's status never returns, and a decision never
goes back from REJECT — property tests over random series of looks.

Each example is a random experiment whose data may change from hour to hour without warning (rates,
sizes, latency, memory: the series need not be stationary, which is what makes a status flip when a
rule is not written to exclude it). The looks are chained as the comparator chains them: each look
starts from the previous look's running intervals.

* Rule level (:func:`comparator.judge.checks.evaluate` alone): every check with an interval decides by
  conditions that exclude each other on the running intersection, so its PASS or FAIL stays with
  no help from the verdict state. ``memory_headroom`` (a running peak, no interval) and
  ``class_psi`` (a point-estimate band) are not intervals: the next level keeps them.
* Verdict level (:func:`comparator.judge.verdict.judge` over a store): every check's decided status
  stays, for all 17 checks, and a REJECT stays REJECT.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comparator.judge.checks import evaluate
from comparator.judge.decision import DECIDED, Decision
from comparator.judge.policy import load_policy
from comparator.judge.results import CheckContext, Status
from comparator.judge.verdict import judge
from comparator.measure.aggregates import Aggregate, Moments, ddsketch_key, keys
from comparator.store.reads import MemorySample
from tests.comparator.verdict_fakes import T0, FakeStore

MIB = 1024.0 * 1024.0
# A policy whose margins the random series straddle often, so statuses do get decided both ways.
POLICY = load_policy(None).model_copy(update={"n_opt": 20_000.0})
TASKS = ("classification", "regression", "embedding", "ranking")
# Checks that decide on a running interval: monotone at the rule level.
INTERVAL_CHECKS = {
    "coverage",
    "error_delta",
    "timeout_delta",
    "invalid_delta",
    "top1_disagreement",
    "js_tail",
    "reg_bias",
    "reg_tolerance",
    "emb_cosine_tail",
    "rank_rbo",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "memory_steady",
}

hour_st = st.fixed_dictionaries(
    {
        "n": st.integers(0, 4000),
        "p_err": st.sampled_from([0.0, 0.0005, 0.002, 0.01]),
        "cand_err": st.sampled_from([0.0, 0.0005, 0.002, 0.01, 0.05]),
        "bad": st.sampled_from([0.0, 0.02, 0.05, 0.08, 0.3]),  # share-type badness
        "cover": st.sampled_from([1.0, 0.97, 0.95, 0.9, 0.0]),
        "slow": st.sampled_from([1.0, 1.05, 1.15, 1.5, 3.0]),
        "mem": st.sampled_from([0.0, 20.0, 200.0, 2000.0]),  # MiB/h of candidate growth
    }
)
series_st = st.fixed_dictionaries(
    {
        "task": st.sampled_from(TASKS),
        "twin": st.booleans(),
        "seed": st.integers(0, 2**32 - 1),
        "hours": st.lists(hour_st, min_size=2, max_size=30),
    }
)


def _pair_cells(agg: Aggregate, name: str, rng: np.random.Generator, n: int, pp: float, pc: float):
    probs = [(1 - pp) * (1 - pc), (1 - pp) * pc, pp * (1 - pc), pp * pc]
    for (a, b), c in zip(((0, 0), (0, 1), (1, 0), (1, 1)), rng.multinomial(n, probs), strict=True):
        agg.add(keys.paired(name, bool(a), bool(b)), int(c))


def _hour(rng: np.random.Generator, h: dict[str, Any], task: str, twin: bool) -> Aggregate:
    n = h["n"]
    agg = Aggregate()
    agg.add(keys.PAIRS, n)
    _pair_cells(agg, keys.ERROR, rng, n, h["p_err"], h["p_err"] + h["cand_err"])
    _pair_cells(agg, keys.TIMEOUT, rng, n, h["p_err"] / 2, h["p_err"] / 2 + h["cand_err"])
    ok = int(rng.binomial(n, 0.99))
    _pair_cells(agg, keys.INVALID, rng, ok, 0.0, h["cand_err"] / 10)
    k = int(rng.binomial(ok, h["cover"]))
    bad = int(rng.binomial(k, h["bad"]))
    if task == "classification":
        agg.add(keys.CLS_N, k)
        agg.add(keys.CLS_AGREE, k - bad)
        agg.add(keys.JS_TAIL, int(rng.binomial(k, h["bad"])))
        agg.add_moments(keys.JS, Moments(k, 0.05, 0.01 * k))
        cls = rng.multinomial(k, [0.5, 0.3, 0.2])
        cand = rng.multinomial(k, [0.5 - h["bad"], 0.3, 0.2 + h["bad"]])
        agg.add_cats(keys.CLASS_PROD, {str(i): int(c) for i, c in enumerate(cls)})
        agg.add_cats(keys.CLASS_CAND, {str(i): int(c) for i, c in enumerate(cand)})
        if twin:
            nt = k // 10
            agg.add(keys.TWIN_CLS_N, nt)
            agg.add(keys.TWIN_CLS_AGREE, nt - int(rng.binomial(nt, 0.03)))
            agg.add_moments(keys.TWIN_JS, Moments(nt, 0.05, 0.01 * nt))
            agg.add(keys.TWIN_JS_TAIL, int(rng.binomial(nt, 0.03)))
    elif task == "regression":
        agg.add(keys.REG_N, k)
        agg.add(keys.REG_TOL_EXCEED, bad)
        agg.add_moments(keys.REG_DIFF, Moments(k, h["bad"] * 2 - 0.05, 1.0 * k))
        agg.add_moments(keys.REG_PROD, Moments(k, 3.0, 1.0 * k))
    elif task == "embedding":
        agg.add(keys.EMB_N, k)
        agg.add(keys.EMB_COS_TAIL, bad)
    else:
        agg.add_moments(keys.RANK_RBO_LOSS, Moments(k, h["bad"] * 4, 0.04 * k))
    for side, factor in (("prod", 1.0), ("cand", h["slow"])):
        lat = rng.lognormal(np.log(20.0 * factor), 0.4, size=n)
        late = lat > 400.0
        ks, counts = np.unique([ddsketch_key(x) for x in lat[~late]], return_counts=True)
        agg.add_hist(keys.latency(side), {int(a): int(b) for a, b in zip(ks, counts, strict=True)})
        agg.add(keys.censored(side), int(late.sum()))
        if late.any():
            agg.add_moments(f"lat.{side}.deadline", Moments(int(late.sum()), 400.0, 0.0))
    return agg


def _memory(rng: np.random.Generator, hours: list[dict[str, Any]]) -> list[MemorySample]:
    out, cand = [], 1000.0
    for i, h in enumerate(hours):
        for m in range(0, 60, 20):
            ts = T0 + timedelta(hours=i, minutes=m + 1)
            cand += h["mem"] / 3
            for side, v in (("prod", 1000.0), ("cand", cand)):
                noise = float(rng.normal(0, 5))
                out.append(MemorySample(ts, side, "rss", (v + noise) * MIB, 4000 * MIB))
    return out


def _assert_monotone(history: dict[str, list[Status]], ids: set[str] | None = None) -> None:
    for cid, seq in history.items():
        if ids is not None and cid not in ids:
            continue
        first = next((i for i, s in enumerate(seq) if s in DECIDED), None)
        if first is not None:
            assert all(s is seq[first] for s in seq[first:]), (cid, seq)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series_st)
def test_interval_checks_never_return_from_a_decided_status(series: dict[str, Any]) -> None:
    rng = np.random.default_rng(series["seed"])
    memory = _memory(rng, series["hours"])
    agg = Aggregate()
    prior: dict[str, list[float]] = {}
    history: dict[str, list[Status]] = {}
    for i, h in enumerate(series["hours"], start=1):
        agg.merge(_hour(rng, h, series["task"], series["twin"]))
        at = T0 + timedelta(hours=i)
        ctx = CheckContext(POLICY, series["task"], 20_000.0, float(i), T0, at, prior)
        results, prior = evaluate(agg, memory, ctx)
        for r in results:
            history.setdefault(r.id, []).append(r.status)
    _assert_monotone(history, INTERVAL_CHECKS)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series_st)
def test_no_status_returns_and_reject_is_final_across_saved_looks(series: dict[str, Any]) -> None:
    asyncio.run(_saved_looks(series))


async def _saved_looks(series: dict[str, Any]) -> None:
    rng = np.random.default_rng(series["seed"])
    store = FakeStore()
    store.add("x", task=series["task"])
    store.memory["x"] = _memory(rng, series["hours"])
    history: dict[str, list[Status]] = {}
    decisions: list[Decision] = []
    for i, h in enumerate(series["hours"]):
        store.hours["x"].append((T0 + timedelta(hours=i), _hour(rng, h, series["task"], False)))
        v = await judge(store, "x", POLICY, T0 + timedelta(hours=i + 1))
        decisions.append(v.decision)
        for c in v.checks:
            history.setdefault(c.id, []).append(c.status)
    _assert_monotone(history)
    if Decision.REJECT in decisions:
        assert all(d is Decision.REJECT for d in decisions[decisions.index(Decision.REJECT) :])
