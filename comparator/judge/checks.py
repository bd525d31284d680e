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

import enum
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from comparator.judge import stats
from comparator.judge.policy import CHECK_GROUPS, Policy
from comparator.measure.aggregates import GAMMA, OTHER, Aggregate, keys

__all__ = [
    "SEGMENT_CHECKS",
    "TASK_CHECKS",
    "CheckContext",
    "CheckResult",
    "SegmentResult",
    "Status",
    "coverage_counts",
    "evaluate",
    "evaluate_segments",
    "infer_task",
]

log = logging.getLogger(__name__)


#: Divergence checks per task; every other check applies to every task.
TASK_CHECKS: dict[str, tuple[str, ...]] = {
    "classification": ("top1_disagreement", "js_tail", "class_psi"),
    "regression": ("reg_bias", "reg_tolerance"),
    "embedding": ("emb_cosine_tail",),
    "ranking": ("rank_rbo",),
}
_DIVERGENCE = {c for ids in TASK_CHECKS.values() for c in ids}
ATOL_SD = 0.01  # reg_tolerance: atol = 0.01·sd(y_p)


class Status(enum.StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"
    NODATA = "NODATA"
    NA = "NA"


@dataclass(frozen=True)
class CheckResult:
    id: str
    group: str
    critical: bool
    status: Status
    estimate: float | None
    lower: float | None
    upper: float | None
    margin: float | None
    n: int
    reason: str
    eta_hours: float | None

    def to_json(self) -> dict[str, Any]:
        def num(x: float | None) -> float | None:
            return x if x is None or math.isfinite(x) else None

        return {
            "id": self.id,
            "group": self.group,
            "critical": self.critical,
            "status": str(self.status),
            "estimate": num(self.estimate),
            "lower": num(self.lower),
            "upper": num(self.upper),
            "margin": self.margin,
            "n": self.n,
            "reason": self.reason,
            "eta_hours": self.eta_hours,
        }


@dataclass(frozen=True)
class CheckContext:
    """What a look knows besides the aggregate."""

    policy: Policy
    task: str | None
    n_opt: float
    elapsed_hours: float
    experiment_start: datetime
    at: datetime
    prior: dict[str, list[float]] = field(default_factory=dict)
    #: Sides ("prod", "cand") whose memory is scraped; None: unknown (the sides seen in samples).
    memory_sources: frozenset[str] | None = None


def infer_task(agg: Aggregate, configured: str | None) -> str | None:
    """The configured task, or the one whose counters are present (None: no model outputs seen)."""
    if configured in TASK_CHECKS:
        return configured
    if agg.count(keys.CLS_N):
        return "classification"
    if agg.count(keys.REG_N) or agg.moment(keys.REG_DIFF).n:
        return "regression"
    if agg.count(keys.EMB_N):
        return "embedding"
    if agg.moment(keys.RANK_RBO_LOSS).n:
        return "ranking"
    return None


def coverage_counts(agg: Aggregate) -> tuple[int, int]:
    """(pairs whose outputs were read and compared, pairs with both sides ok).

    Pairs with both sides ok are the ``invalid`` cells (counted over exactly those); compared ones
    are the divergence counters of whatever task the batches were read as.
    """
    both_ok = sum(
        agg.count(keys.paired(keys.INVALID, a, b))
        for a, b in ((False, False), (False, True), (True, False), (True, True))
    )
    compared = (
        agg.count(keys.CLS_N)
        + agg.count(keys.REG_N)
        + agg.count(keys.EMB_N)
        + agg.moment(keys.RANK_RBO_LOSS).n
    )
    return min(compared, both_ok), both_ok


def _f(x: float) -> str:
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.4g}" if abs(x) < 1e-2 and x != 0 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.4f}"


class _Look:
    """Builds the results of one look; holds the per-check α, the priors and the new intervals."""

    def __init__(self, agg: Aggregate, memory: Sequence[Any], ctx: CheckContext) -> None:
        self.agg, self.samples, self.ctx, self.p = agg, memory, ctx, ctx.policy
        self.task = ctx.task
        self.intervals: dict[str, list[float]] = {}
        self.defects: dict[str, str] = {}  # stored key -> what did not overlap
        critical = [c for c in CHECK_GROUPS if self.applies(c) and self.p.check(c).critical]
        self.alpha_critical = stats.bonferroni(self.p.alpha, len(critical))

    # -- plumbing ---------------------------------------------------------------------------------
    def applies(self, cid: str) -> bool:
        if not self.p.check(cid).enabled:
            return False
        if cid in _DIVERGENCE:
            return self.task is not None and cid in TASK_CHECKS[self.task]
        return True

    def alpha(self, cid: str) -> float:
        return self.alpha_critical if self.p.check(cid).critical else self.p.alpha

    def result(
        self,
        cid: str,
        status: Status,
        reason: str,
        *,
        estimate: float | None = None,
        lower: float | None = None,
        upper: float | None = None,
        n: int = 0,
        eta: float | None = None,
        margin: float | None = None,
    ) -> CheckResult:
        cp = self.p.check(cid)
        notes = [d for k, d in self.defects.items() if k == cid or k.startswith(f"{cid}.")]
        if notes:
            reason = f"{reason}; DEFECT: {'; '.join(notes)}"
        return CheckResult(
            cid,
            CHECK_GROUPS[cid],
            cp.critical,
            status,
            estimate,
            lower,
            upper,
            cp.margin if margin is None else margin,
            n,
            reason,
            eta,
        )

    def intersect(self, key: str, lower: float, upper: float) -> tuple[float, float]:
        """Running intersection with the previous looks.

        An empty intersection is a defect (the data changed under the check: a CS covers the
        truth at every look at once, so two of them that do not overlap cannot both hold). The
        stored interval is kept, so the status stays, and the defect is reported in the reason
        and the log.
        """
        old = self.ctx.prior.get(key)
        if old is not None:
            lo, hi = max(lower, old[0]), min(upper, old[1])
            if lo <= hi:
                lower, upper = lo, hi
            else:
                text = (
                    f"this look's interval [{_f(lower)}, {_f(upper)}] does not overlap the stored "
                    f"[{_f(old[0])}, {_f(old[1])}]: the data changed under the check"
                )
                self.defects[key] = text
                log.warning("check %s: %s", key, text)
                lower, upper = old[0], old[1]
        self.intervals[key] = [lower, upper]
        return lower, upper

    def eta(self, n: int, n_needed: float | None) -> float | None:
        if n_needed is None or self.ctx.elapsed_hours <= 0 or n <= 0:
            return None
        rate = n / self.ctx.elapsed_hours
        return max(0.0, (n_needed - n) / rate)

    def nodata(self, cid: str, n: int, need: int, what: str = "units") -> CheckResult:
        eta = self.eta(n, need) if n > 0 else None
        return self.result(cid, Status.NODATA, f"{n} {what} < minimum {need}", n=n, eta=eta)

    # -- CS-based rules ---------------------------------------------------------------------------
    def bounded(
        self,
        cid: str,
        status: Status,
        reason: str,
        cs: stats.CS,
        interval: tuple[float, float],
        *,
        eta: float | None = None,
        margin: float | None = None,
    ) -> CheckResult:
        """A result carrying ``cs``'s estimate and count with the running ``interval``."""
        lo, hi = interval
        return self.result(
            cid,
            status,
            reason,
            estimate=cs.estimate,
            lower=lo,
            upper=hi,
            n=cs.n,
            eta=eta,
            margin=margin,
        )

    def upper_rule(
        self, cid: str, label: str, cs: stats.CS, margin: float, *, key: str | None = None
    ) -> CheckResult:
        """Bad-if-high rule; ``key`` names the stored interval when it differs from the check id."""
        if not math.isfinite(cs.estimate):
            return self.result(cid, Status.NODATA, f"{label}: no finite estimate", n=cs.n)
        lo, hi = self.intersect(key or cid, cs.lower, cs.upper)
        est = cs.estimate
        text = f"{label} {_f(est)} [{_f(lo)}, {_f(hi)}]"
        if lo > margin:
            return self.bounded(
                cid, Status.FAIL, f"{text} > {_f(margin)}", cs, (lo, hi), margin=margin
            )
        if hi <= margin:
            return self.bounded(
                cid, Status.PASS, f"{text} ≤ {_f(margin)}", cs, (lo, hi), margin=margin
            )
        n_star = stats.n_to_resolve(cs.s, abs(est - margin), self.alpha(cid), self.ctx.n_opt, cs.n)
        if n_star is not None and n_star <= cs.n:
            n_star = None  # held open by an earlier look or the twin's interval: no simple ETA
        return self.bounded(
            cid,
            Status.INCONCLUSIVE,
            f"{text} straddles {_f(margin)}",
            cs,
            (lo, hi),
            eta=self.eta(cs.n, n_star),
            margin=margin,
        )

    def lower_rule(self, cid: str, label: str, cs: stats.CS, margin: float) -> CheckResult:
        """Bad-if-low rule: PASS if the lower bound ≥ δ, FAIL if the upper bound < δ."""
        lo, hi = self.intersect(cid, cs.lower, cs.upper)
        text = f"{label} {_f(cs.estimate)} [{_f(lo)}, {_f(hi)}]"
        if hi < margin:
            return self.bounded(cid, Status.FAIL, f"{text} < {_f(margin)}", cs, (lo, hi))
        if lo >= margin:
            return self.bounded(cid, Status.PASS, f"{text} ≥ {_f(margin)}", cs, (lo, hi))
        n_star = stats.n_to_resolve(
            cs.s, abs(cs.estimate - margin), self.alpha(cid), self.ctx.n_opt, cs.n
        )
        if n_star is not None and n_star <= cs.n:
            n_star = None
        return self.bounded(
            cid,
            Status.INCONCLUSIVE,
            f"{text} straddles {_f(margin)}",
            cs,
            (lo, hi),
            eta=self.eta(cs.n, n_star),
        )

    def two_sided_rule(
        self, cid: str, label: str, cs: stats.CS, margin: float, s: float
    ) -> CheckResult:
        if not math.isfinite(cs.estimate):
            return self.result(cid, Status.NODATA, f"{label}: no finite estimate", n=cs.n)
        lo, hi = self.intersect(cid, cs.lower, cs.upper)
        est = cs.estimate
        text = f"{label} {_f(est)} [{_f(lo)}, {_f(hi)}]"
        if -margin <= lo and hi <= margin:
            return self.bounded(cid, Status.PASS, f"{text} within ±{_f(margin)}", cs, (lo, hi))
        if hi < -margin or lo > margin:
            return self.bounded(cid, Status.FAIL, f"{text} outside ±{_f(margin)}", cs, (lo, hi))
        n_star = stats.n_to_resolve(
            s, abs(abs(est) - margin), self.alpha(cid), self.ctx.n_opt, cs.n
        )
        return self.bounded(
            cid,
            Status.INCONCLUSIVE,
            f"{text} overlaps ±{_f(margin)}",
            cs,
            (lo, hi),
            eta=self.eta(cs.n, n_star),
        )

    # -- reliability ------------------------------------------------------------------------------
    def paired(self, cid: str, name: str) -> CheckResult:
        n00, n01, n10, n11 = (
            self.agg.count(keys.paired(name, a, b))
            for a, b in ((False, False), (False, True), (True, False), (True, True))
        )
        n = n00 + n01 + n10 + n11
        if n < self.p.minimums.units:
            return self.nodata(cid, n, self.p.minimums.units, "pairs")
        cs = stats.paired_rate_cs(n00, n01, n10, n11, self.alpha(cid), self.ctx.n_opt)
        return self.upper_rule(cid, f"{name} rate Δ", cs, self.p.check(cid).margin)

    # -- evidence ---------------------------------------------------------------------------------
    def coverage(self) -> CheckResult:
        """Share of pairs with both sides ok whose outputs were read and compared
        (:func:`coverage_counts`). Outputs that could not be read (not JSON, a wrong pointer, cut at the body limit) count as invalid on
        both sides, which ``invalid_delta`` does not see: this check does. No comparison at all is
        a FAIL, never a PROMOTE.
        """
        cid = "coverage"
        compared, n = coverage_counts(self.agg)
        if n < self.p.minimums.units:
            return self.nodata(cid, n, self.p.minimums.units, "pairs with both sides ok")
        cs = stats.proportion_cs(compared, n, self.alpha(cid), self.ctx.n_opt)
        return self.lower_rule(cid, "outputs compared", cs, self.p.check(cid).margin)

    # -- divergence -------------------------------------------------------------------------------
    @property
    def twin_configured(self) -> bool:
        """A production twin answers on a hash slice (any twin outcome or comparison seen)."""
        outcomes = ("ok", "error", "timeout", "shed", "skipped")
        return any(self.agg.count(keys.outcome("twin", o)) for o in outcomes) or bool(
            self.agg.count(keys.TWIN_CLS_N)
        )

    def share(
        self, cid: str, label: str, k: int, n: int, unpaired: tuple[int, int] | None = None
    ) -> CheckResult:
        """A bad-if-high share k/n; with a production twin, also the excess over its noise floor.

        The excess is per request, paired, on the twin slice: f(prod, cand) − f(prod, twin) from
        the discordant cells ``twin.{cid}.n{twin_bad}{cand_bad}`` (comparator.measure.normalize's fold).
        ``unpaired`` (twin's k, n) serves aggregates stored before those cells existed: two
        intervals subtracted.
        """
        if n < self.p.minimums.units:
            return self.nodata(cid, n, self.p.minimums.units, "pairs")
        cp = self.p.check(cid)
        if not self.twin_configured:
            cs = stats.proportion_cs(k, n, self.alpha(cid), self.ctx.n_opt)
            return self.upper_rule(cid, label, cs, cp.margin)
        a = self.alpha(cid) / 2
        plain = stats.proportion_cs(k, n, a, self.ctx.n_opt)
        cells = [self.agg.count(f"twin.{cid}.n{x}") for x in ("00", "01", "10", "11")]
        if sum(cells) >= self.p.minimums.units:
            n00, n01, n10, n11 = cells
            ex = stats.paired_rate_cs(n00, n01, n10, n11, a, self.ctx.n_opt)
            what = "paired excess over twin"
        elif not sum(cells) and unpaired and unpaired[1] >= self.p.minimums.units:
            c = stats.proportion_cs(k, n, a / 2, self.ctx.n_opt)
            t = stats.proportion_cs(unpaired[0], unpaired[1], a / 2, self.ctx.n_opt)
            ex = stats.CS(c.estimate - t.estimate, c.lower - t.upper, c.upper - t.lower, n, c.s)
            what = "excess over twin (unpaired)"
        else:
            ex = stats.CS(math.nan, -math.inf, math.inf, sum(cells))
            what = f"excess over twin ({sum(cells)} twin pairs < {self.p.minimums.units})"
        return self.either_rule(cid, label, plain, what, ex)

    def either_rule(
        self, cid: str, label: str, plain: stats.CS, what: str, excess: stats.CS
    ) -> CheckResult:
        """Two statistics at α/2 each, as the latency rule: the check's own and its excess over the
        production twin. PASS if either is within its margin (the excess: ``noise_margin``), FAIL
        only if both are beyond: the conditions exclude each other, there is no switch at some
        twin count, and with running intersections the status is monotone.
        """
        cp = self.p.check(cid)
        noise = cp.noise_margin or cp.margin
        p_lo, p_hi = self.intersect(cid, plain.lower, plain.upper)
        e_lo, e_hi = self.intersect(f"{cid}.excess", excess.lower, excess.upper)
        text = (
            f"{label} {_f(plain.estimate)} [{_f(p_lo)}, {_f(p_hi)}] (margin {_f(cp.margin)}); "
            f"{what} {_f(excess.estimate)} [{_f(e_lo)}, {_f(e_hi)}] (margin {_f(noise)})"
        )

        def done(status: Status, verdict: str) -> CheckResult:
            return self.bounded(cid, status, f"{text}: {verdict}", plain, (p_lo, p_hi))

        if p_hi <= cp.margin:
            return done(Status.PASS, "within its margin")
        if e_hi <= noise:
            return done(Status.PASS, "the excess over the twin is within its margin")
        if p_lo > cp.margin and e_lo > noise:
            return done(Status.FAIL, "both beyond their margins")
        return done(Status.INCONCLUSIVE, "not yet decided")

    def class_psi(self) -> CheckResult:
        cid = "class_psi"
        prod, cand = self.agg.cat(keys.CLASS_PROD), self.agg.cat(keys.CLASS_CAND)
        bins = sorted(set(prod) | set(cand))
        n = min(sum(prod.values()), sum(cand.values()))
        need = max(self.p.minimums.units, 200 * (len(bins) - 1))
        if n < need:
            return self.nodata(cid, n, need, "pairs per side")
        value = stats.psi([prod.get(b, 0) for b in bins], [cand.get(b, 0) for b in bins])
        cp = self.p.check(cid)
        fail_at = cp.fail_at or 2 * cp.margin
        status = (
            Status.PASS if value < cp.margin else Status.WARN if value < fail_at else Status.FAIL
        )
        cmp = (
            f"< {_f(cp.margin)}"
            if status is Status.PASS
            else f"≥ {_f(cp.margin if status is Status.WARN else fail_at)}"
        )
        return self.result(cid, status, f"class PSI {_f(value)} {cmp}", estimate=value, n=n)

    def reg_bias(self) -> CheckResult:
        cid = "reg_bias"
        d, y = self.agg.moment(keys.REG_DIFF), self.agg.moment(keys.REG_PROD)
        if d.n < self.p.minimums.units:
            return self.nodata(cid, d.n, self.p.minimums.units, "pairs")
        sd = (
            math.sqrt(y.variance) if y.variance > 0 else 1.0
        )  # constant production output: raw units
        cs = stats.mean_cs(
            d.mean / sd, d.variance / (sd * sd), d.n, self.alpha(cid), self.ctx.n_opt
        )
        return self.two_sided_rule(cid, "standardised bias", cs, self.p.check(cid).margin, cs.s)

    def reg_tolerance(self) -> CheckResult:
        """Share with |Δ| > atol + rtol·|y_p|, atol = 0.01·sd(y_p) (VERDICT.md).

        sd(y_p) is known only at the look, so the fold keeps, per pair, the atol it would need
        (|Δ| − rtol·|y_p|, a log histogram ``reg.tol_over``): a bucket whose upper edge is above
        atol counts as out of tolerance (conservative within the bucket's 1%). Aggregates from
        before that histogram use the flag folded with the ingest's atol.
        """
        cid = "reg_tolerance"
        n = self.agg.count(keys.REG_N)
        y = self.agg.moment(keys.REG_PROD)
        atol = ATOL_SD * math.sqrt(y.variance)
        over = self.agg.hist("reg.tol_over")
        if over or not self.agg.count(keys.REG_TOL_EXCEED):
            k = sum(c for b, c in over.items() if GAMMA**b > atol)
            label = f"share out of tolerance (atol {_f(atol)})"
        else:
            k = self.agg.count(keys.REG_TOL_EXCEED)
            label = "share out of tolerance"
        return self.share(cid, label, k, n)

    def rank_rbo(self) -> CheckResult:
        cid = "rank_rbo"
        m = self.agg.moment(keys.RANK_RBO_LOSS)
        if m.n < self.p.minimums.units:
            return self.nodata(cid, m.n, self.p.minimums.units, "pairs")
        if not self.twin_configured:
            cs = stats.mean_cs(m.mean, m.variance, m.n, self.alpha(cid), self.ctx.n_opt)
            return self.upper_rule(cid, "mean 1 − RBO", cs, self.p.check(cid).margin)
        a = self.alpha(cid) / 2
        plain = stats.mean_cs(m.mean, m.variance, m.n, a, self.ctx.n_opt)
        x = self.agg.moment("twin.rank_rbo.excess")  # per request, on the twin slice
        if x.n >= self.p.minimums.units:
            ex = stats.mean_cs(x.mean, x.variance, x.n, a, self.ctx.n_opt)
            what = "paired excess over twin"
        else:
            ex = stats.CS(math.nan, -math.inf, math.inf, x.n)
            what = f"excess over twin ({x.n} twin pairs < {self.p.minimums.units})"
        return self.either_rule(cid, "mean 1 − RBO", plain, what, ex)

    # -- latency ----------------------------------------------------------------------------------
    def latency(self, cid: str, p: float) -> CheckResult:
        cp, mins = self.p.check(cid), self.p.minimums
        a = self.alpha(cid) / 2  # split between the two sides
        bands: dict[str, stats.QuantileBand] = {}
        for side in ("prod", "cand"):
            hist = self.agg.hist(keys.latency(side))
            completed = sum(hist.values())
            cens = self.agg.count(keys.censored(side))
            deadline = self.agg.moment(f"lat.{side}.deadline").mean if cens else math.inf
            if completed + cens < mins.units:
                return self.nodata(cid, completed + cens, mins.units, f"{side} latencies")
            if completed < mins.events:
                return self.nodata(cid, completed, mins.events, f"completed {side} calls")
            bands[side] = stats.quantile_band(hist, cens, deadline, p, a, self.ctx.n_opt)
        cand, prod = bands["cand"], bands["prod"]
        ratio = stats.quantile_ratio_cs(cand, prod)
        lo, hi = self.intersect(cid, ratio.lower, ratio.upper)
        d_lo, d_hi = self.intersect(
            f"{cid}.diff_ms", cand.lower - prod.upper, cand.upper - prod.lower
        )
        name = f"p{round(p * 100)}"
        text = f"{name} ratio {_f(ratio.estimate)} [{_f(lo)}, {_f(hi)}]"
        if not cand.identifiable:
            text += f" (cand {name} among timeouts)"

        def done(status: Status, reason: str) -> CheckResult:
            return self.result(
                cid, status, reason, estimate=ratio.estimate, lower=lo, upper=hi, n=ratio.n
            )

        # VERDICT.md: PASS if the ratio's UCB ≤ δ or the whole CS of the difference is within
        # ±abs_ms; FAIL only if the ratio's LCB > δ and the difference's LCB > abs_ms. The two
        # exclude each other, so with intersected CSs a decided status never returns.
        abs_ms = cp.abs_ms
        diff = f"{name} difference [{_f(d_lo)}, {_f(d_hi)}] ms"
        if hi <= cp.margin:
            return done(Status.PASS, f"{text} ≤ {_f(cp.margin)}")
        if abs_ms is not None and -abs_ms <= d_lo and d_hi <= abs_ms:
            return done(Status.PASS, f"{diff} within ±{_f(abs_ms)} ms ({text})")
        if lo > cp.margin and (abs_ms is None or d_lo > abs_ms):
            beyond = "" if abs_ms is None else f" and {diff} > {_f(abs_ms)} ms"
            return done(Status.FAIL, f"{text} > {_f(cp.margin)}{beyond}")
        return done(Status.INCONCLUSIVE, f"{text} straddles {_f(cp.margin)}; {diff}")


def evaluate(
    agg: Aggregate, memory: Sequence[Any], ctx: CheckContext
) -> tuple[list[CheckResult], dict[str, list[float]]]:
    """Every check of VERDICT.md for one look; returns the results and the intervals to store."""
    look = _Look(agg, memory, ctx)
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
        "class_psi": look.class_psi,
        "reg_bias": look.reg_bias,
        "reg_tolerance": look.reg_tolerance,
        "emb_cosine_tail": lambda: look.share(
            "emb_cosine_tail",
            "share cosine < 0.95",
            agg.count(keys.EMB_COS_TAIL),
            agg.count(keys.EMB_N),
        ),
        "rank_rbo": look.rank_rbo,
        "latency_p50": lambda: look.latency("latency_p50", 0.50),
        "latency_p95": lambda: look.latency("latency_p95", 0.95),
        "latency_p99": lambda: look.latency("latency_p99", 0.99),
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
    # Imported here: memory_checks builds on this module's look and result types.
    from comparator.judge.memory_checks import memory_results

    results.extend(memory_results(look))
    return results, look.intervals


def _task_of(cid: str) -> str:
    return next((t for t, ids in TASK_CHECKS.items() if cid in ids), "")


# -- segments -------------------------------------------------------------------------------------
#: Checks that also run per segment when critical: every reliability and divergence check with a
#: confidence sequence (class_psi is a point-estimate band, and needs class histograms).
SEGMENT_CHECKS = (
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
)


@dataclass(frozen=True)
class SegmentResult:
    """One check on one segment; only its FAIL counts (it REJECTs, naming the segment)."""

    dimension: str
    value: str
    pairs: int
    check: CheckResult

    @property
    def name(self) -> str:
        return f"{self.dimension}={self.value}"

    @property
    def distance(self) -> float:
        """How far the interval lies from the margin, in margins: > 0 beyond it (the bound
        nearest the margin past it), ≤ 0 within; NaN without an interval."""
        c = self.check
        if c.lower is None or c.upper is None or not c.margin:
            return math.nan
        if c.id == "coverage":  # bad if low
            return (c.margin - c.upper) / c.margin
        if c.id == "reg_bias":  # two-sided
            return (max(-c.upper, c.lower) - c.margin) / c.margin
        return (c.lower - c.margin) / c.margin

    def to_json(self) -> dict[str, Any]:
        d = self.distance
        return {
            "dimension": self.dimension,
            "value": self.value,
            "pairs": self.pairs,
            "distance": d if math.isfinite(d) else None,
            **self.check.to_json(),
        }


def segment_dimensions(agg: Aggregate, ctx: CheckContext) -> list[str]:
    """The dimensions a look checks: the policy's, or every one the pairs carry."""
    conf = ctx.policy.segments
    if not conf.enabled:
        return []
    return list(conf.dimensions) if conf.dimensions else sorted(agg.segments)


def evaluate_segments(
    agg: Aggregate, ctx: CheckContext
) -> tuple[list[SegmentResult], dict[str, list[float]]]:
    """Each critical reliability and divergence check of VERDICT.md on each segment.

    Per dimension the top ``k`` segments by pairs (the rest merged as "(other)"); each check at
    α_check / (k · dimensions) with the look's n_opt and the running intersection of the
    segment's earlier looks, stored under ``seg:{dimension}={value}:{check}`` (not for "(other)",
    whose members change). A segment below the minimum counts is NODATA and blocks nothing.
    """
    dims = segment_dimensions(agg, ctx)
    k = ctx.policy.segments.k
    out: list[SegmentResult] = []
    intervals: dict[str, list[float]] = {}
    for dim in dims:
        for value, seg in agg.top_segments(dim, k).items():
            prefix = f"seg:{dim}={value}:"
            prior = (
                {}
                if value == OTHER
                else {
                    key[len(prefix) :]: v for key, v in ctx.prior.items() if key.startswith(prefix)
                }
            )
            sctx = CheckContext(
                ctx.policy,
                ctx.task,
                ctx.n_opt,
                ctx.elapsed_hours,
                ctx.experiment_start,
                ctx.at,
                prior,
                ctx.memory_sources,
            )
            look = _Look(seg, (), sctx)
            look.alpha_critical = look.alpha_critical / (k * len(dims))
            for cid in SEGMENT_CHECKS:
                if not (look.applies(cid) and look.p.check(cid).critical):
                    continue
                result = _segment_check(look, seg, cid)
                out.append(SegmentResult(dim, value, seg.count(keys.PAIRS), result))
            if value != OTHER:
                intervals.update({prefix + key: v for key, v in look.intervals.items()})
    return out, intervals


def _segment_check(look: _Look, agg: Aggregate, cid: str) -> CheckResult:
    if cid == "coverage":
        return look.coverage()
    if cid in ("error_delta", "timeout_delta", "invalid_delta"):
        name = {"error_delta": keys.ERROR, "timeout_delta": keys.TIMEOUT}.get(cid, keys.INVALID)
        return look.paired(cid, name)
    if cid == "top1_disagreement":
        n = agg.count(keys.CLS_N)
        twin = agg.count(keys.TWIN_CLS_N)
        return look.share(
            cid,
            "top-1 disagreement",
            n - agg.count(keys.CLS_AGREE),
            n,
            (twin - agg.count(keys.TWIN_CLS_AGREE), twin),
        )
    if cid == "js_tail":
        return look.share(
            cid,
            "share JS > 0.1",
            agg.count(keys.JS_TAIL),
            agg.moment(keys.JS).n,
            (agg.count(keys.TWIN_JS_TAIL), agg.moment(keys.TWIN_JS).n),
        )
    if cid == "emb_cosine_tail":
        return look.share(
            cid, "share cosine < 0.95", agg.count(keys.EMB_COS_TAIL), agg.count(keys.EMB_N)
        )
    if cid == "reg_bias":
        return look.reg_bias()
    if cid == "reg_tolerance":
        return look.reg_tolerance()
    return look.rank_rbo()
