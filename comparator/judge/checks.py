"""The checks of VERDICT.md: merged aggregates + memory samples → one CheckResult per check.

Each check reads only mergeable state (counters, moments, histograms) so a look costs O(hours), not
O(pairs). CS-based checks take the interval of the previous looks (``prior``) and intersect it with
today's, so a bound only ever tightens and a PASS or FAIL never flips back; the new intervals are
returned for the caller to store. Statuses follow VERDICT.md:

* bad-if-high θ with margin δ: FAIL if lower > δ, PASS if upper ≤ δ, else INCONCLUSIVE;
* bad-if-low (coverage): PASS if lower ≥ δ, FAIL if upper < δ;
* two-sided: PASS if the CS ⊂ [−δ, δ], FAIL if disjoint from it;
* two statistics, PASS if either is within its margin, FAIL only if both are beyond: latency and
  memory_steady (ratio and difference, from the same per-side bands at α/2 a side); a share or
  rank_rbo with a production twin (the check's statistic and its paired excess over the twin, α/2
  each);
* point-estimate band (class_psi): PASS / WARN / FAIL;
* NODATA below the minimum counts, NA when the check does not apply (other task, no memory limit,
  no scrape target).

The PASS and FAIL conditions of every rule exclude each other and read only the running
intersection, so a decided status never returns (``tests/comparator/test_monotone.py``). When
today's interval does not overlap the stored one, the data changed under the check: the stored
interval is kept and the defect is written into the check's reason and the log, never kept
silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from comparator.judge import stats
from comparator.judge.look import Look
from comparator.judge.memory_checks import memory_results
from comparator.judge.results import TASK_CHECKS, CheckContext, CheckResult, Status, num
from comparator.measure.aggregates import GAMMA, Aggregate, keys

__all__ = ["evaluate"]

ATOL_SD = 0.01  # reg_tolerance: atol = 0.01·sd(y_p)


def class_psi(look: Look) -> CheckResult:
    cid = "class_psi"
    prod, cand = look.agg.cat(keys.CLASS_PROD), look.agg.cat(keys.CLASS_CAND)
    bins = sorted(set(prod) | set(cand))
    n = min(sum(prod.values()), sum(cand.values()))
    need = max(look.p.minimums.units, 200 * (len(bins) - 1))
    if n < need:
        return look.nodata(cid, n, need, "pairs per side")
    value = stats.psi([prod.get(b, 0) for b in bins], [cand.get(b, 0) for b in bins])
    cp = look.p.check(cid)
    fail_at = cp.fail_at or 2 * cp.margin
    status = Status.PASS if value < cp.margin else Status.WARN if value < fail_at else Status.FAIL
    cmp = (
        f"< {num(cp.margin)}"
        if status is Status.PASS
        else f"≥ {num(cp.margin if status is Status.WARN else fail_at)}"
    )
    return look.result(cid, status, f"class PSI {num(value)} {cmp}", estimate=value, n=n)


def reg_bias(look: Look) -> CheckResult:
    cid = "reg_bias"
    d, y = look.agg.moment(keys.REG_DIFF), look.agg.moment(keys.REG_PROD)
    if d.n < look.p.minimums.units:
        return look.nodata(cid, d.n, look.p.minimums.units, "pairs")
    sd = math.sqrt(y.variance) if y.variance > 0 else 1.0  # constant production output: raw units
    cs = stats.mean_cs(d.mean / sd, d.variance / (sd * sd), d.n, look.alpha(cid), look.ctx.n_opt)
    return look.two_sided_rule(cid, "standardised bias", cs, look.p.check(cid).margin, cs.s)


def reg_tolerance(look: Look) -> CheckResult:
    """Share with |Δ| > atol + rtol·|y_p|, atol = 0.01·sd(y_p) (VERDICT.md).

    sd(y_p) is known only at the look, so the fold keeps, per pair, the atol it would need
    (|Δ| − rtol·|y_p|, a log histogram ``reg.tol_over``): a bucket whose upper edge is above
    atol counts as out of tolerance (conservative within the bucket's 1%). Aggregates from
    before that histogram use the flag folded with the ingest's atol.
    """
    cid = "reg_tolerance"
    n = look.agg.count(keys.REG_N)
    y = look.agg.moment(keys.REG_PROD)
    atol = ATOL_SD * math.sqrt(y.variance)
    over = look.agg.hist("reg.tol_over")
    if over or not look.agg.count(keys.REG_TOL_EXCEED):
        k = sum(c for b, c in over.items() if GAMMA**b > atol)
        label = f"share out of tolerance (atol {num(atol)})"
    else:
        k = look.agg.count(keys.REG_TOL_EXCEED)
        label = "share out of tolerance"
    return look.share(cid, label, k, n)


def rank_rbo(look: Look) -> CheckResult:
    cid = "rank_rbo"
    m = look.agg.moment(keys.RANK_RBO_LOSS)
    if m.n < look.p.minimums.units:
        return look.nodata(cid, m.n, look.p.minimums.units, "pairs")
    if not look.twin_configured:
        cs = stats.mean_cs(m.mean, m.variance, m.n, look.alpha(cid), look.ctx.n_opt)
        return look.upper_rule(cid, "mean 1 − RBO", cs, look.p.check(cid).margin)
    a = look.alpha(cid) / 2
    plain = stats.mean_cs(m.mean, m.variance, m.n, a, look.ctx.n_opt)
    x = look.agg.moment("twin.rank_rbo.excess")  # per request, on the twin slice
    if x.n >= look.p.minimums.units:
        ex = stats.mean_cs(x.mean, x.variance, x.n, a, look.ctx.n_opt)
        what = "paired excess over twin"
    else:
        ex = stats.CS(math.nan, -math.inf, math.inf, x.n)
        what = f"excess over twin ({x.n} twin pairs < {look.p.minimums.units})"
    return look.either_rule(cid, "mean 1 − RBO", plain, what, ex)


# -- latency ----------------------------------------------------------------------------------
def latency(look: Look, cid: str, p: float) -> CheckResult:
    cp, mins = look.p.check(cid), look.p.minimums
    a = look.alpha(cid) / 2  # split between the two sides
    bands: dict[str, stats.QuantileBand] = {}
    for side in ("prod", "cand"):
        hist = look.agg.hist(keys.latency(side))
        completed = sum(hist.values())
        cens = look.agg.count(keys.censored(side))
        deadline = look.agg.moment(f"lat.{side}.deadline").mean if cens else math.inf
        if completed + cens < mins.units:
            return look.nodata(cid, completed + cens, mins.units, f"{side} latencies")
        if completed < mins.events:
            return look.nodata(cid, completed, mins.events, f"completed {side} calls")
        bands[side] = stats.quantile_band(hist, cens, deadline, p, a, look.ctx.n_opt)
    cand, prod = bands["cand"], bands["prod"]
    ratio = stats.quantile_ratio_cs(cand, prod)
    lo, hi = look.intersect(cid, ratio.lower, ratio.upper)
    d_lo, d_hi = look.intersect(f"{cid}.diff_ms", cand.lower - prod.upper, cand.upper - prod.lower)
    name = f"p{round(p * 100)}"
    text = f"{name} ratio {num(ratio.estimate)} [{num(lo)}, {num(hi)}]"
    if not cand.identifiable:
        text += f" (cand {name} among timeouts)"

    def done(status: Status, reason: str) -> CheckResult:
        return look.result(
            cid, status, reason, estimate=ratio.estimate, lower=lo, upper=hi, n=ratio.n
        )

    # VERDICT.md: PASS if the ratio's UCB ≤ δ or the whole CS of the difference is within
    # ±abs_ms; FAIL only if the ratio's LCB > δ and the difference's LCB > abs_ms. The two
    # exclude each other, so with intersected CSs a decided status never returns.
    abs_ms = cp.abs_ms
    diff = f"{name} difference [{num(d_lo)}, {num(d_hi)}] ms"
    if hi <= cp.margin:
        return done(Status.PASS, f"{text} ≤ {num(cp.margin)}")
    if abs_ms is not None and -abs_ms <= d_lo and d_hi <= abs_ms:
        return done(Status.PASS, f"{diff} within ±{num(abs_ms)} ms ({text})")
    if lo > cp.margin and (abs_ms is None or d_lo > abs_ms):
        beyond = "" if abs_ms is None else f" and {diff} > {num(abs_ms)} ms"
        return done(Status.FAIL, f"{text} > {num(cp.margin)}{beyond}")
    return done(Status.INCONCLUSIVE, f"{text} straddles {num(cp.margin)}; {diff}")


def evaluate(
    agg: Aggregate, memory: Sequence[Any], ctx: CheckContext
) -> tuple[list[CheckResult], dict[str, list[float]]]:
    """Every check of VERDICT.md for one look; returns the results and the intervals to store."""
    look = Look(agg, memory, ctx)
    results: list[CheckResult] = [
        look.coverage()
        if look.applies("coverage")
        else look.result("coverage", Status.NA, "disabled")
    ]
    for cid, name in (
        ("error_delta", keys.ERROR),
        ("timeout_delta", keys.TIMEOUT),
        ("invalid_delta", keys.INVALID),
    ):
        results.append(
            look.paired(cid, name) if look.applies(cid) else look.result(cid, Status.NA, "disabled")
        )
    builders: dict[str, Callable[[], CheckResult]] = {
        "top1_disagreement": lambda: look.share(
            "top1_disagreement",
            "top-1 disagreement",
            agg.count(keys.CLS_N) - agg.count(keys.CLS_AGREE),
            agg.count(keys.CLS_N),
            (
                agg.count(keys.TWIN_CLS_N) - agg.count(keys.TWIN_CLS_AGREE),
                agg.count(keys.TWIN_CLS_N),
            ),
        ),
        # Denominator: pairs with probability vectors on both sides (label-only pairs have no JS).
        "js_tail": lambda: look.share(
            "js_tail",
            "share JS > 0.1",
            agg.count(keys.JS_TAIL),
            agg.moment(keys.JS).n,
            (agg.count(keys.TWIN_JS_TAIL), agg.moment(keys.TWIN_JS).n),
        ),
        "class_psi": lambda: class_psi(look),
        "reg_bias": lambda: reg_bias(look),
        "reg_tolerance": lambda: reg_tolerance(look),
        "emb_cosine_tail": lambda: look.share(
            "emb_cosine_tail",
            "share cosine < 0.95",
            agg.count(keys.EMB_COS_TAIL),
            agg.count(keys.EMB_N),
        ),
        "rank_rbo": lambda: rank_rbo(look),
        "latency_p50": lambda: latency(look, "latency_p50", 0.50),
        "latency_p95": lambda: latency(look, "latency_p95", 0.95),
        "latency_p99": lambda: latency(look, "latency_p99", 0.99),
    }
    for cid, build in builders.items():
        if look.applies(cid):
            results.append(build())
        else:
            why = (
                "disabled"
                if not look.p.check(cid).enabled
                else f"only for {_task_of(cid)} experiments"
            )
            results.append(look.result(cid, Status.NA, why))
    results.extend(memory_results(look))
    return results, look.intervals


def _task_of(cid: str) -> str:
    return next((t for t, ids in TASK_CHECKS.items() if cid in ids), "")
