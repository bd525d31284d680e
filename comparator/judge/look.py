"""One look at an experiment: the per-check α, the priors and the rules a check is decided by.

:class:`Look` holds what every check needs (the merged aggregate, the memory samples, the policy,
the intervals of earlier looks) and the decision rules of VERDICT.md (bad-if-high, bad-if-low,
two-sided, either-of-two); the checks themselves are in :mod:`comparator.judge.checks`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from comparator.judge import stats
from comparator.judge.policy import CHECK_GROUPS
from comparator.judge.results import (
    DIVERGENCE_CHECKS,
    TASK_CHECKS,
    CheckContext,
    CheckResult,
    Status,
    coverage_counts,
    num,
)
from comparator.measure.aggregates import Aggregate, keys

__all__ = ["Look"]

log = logging.getLogger("comparator.judge.checks")


class Look:
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
        if cid in DIVERGENCE_CHECKS:
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
                    f"this look's interval [{num(lower)}, {num(upper)}] does not overlap the stored "
                    f"[{num(old[0])}, {num(old[1])}]: the data changed under the check"
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
        text = f"{label} {num(est)} [{num(lo)}, {num(hi)}]"
        if lo > margin:
            return self.bounded(
                cid, Status.FAIL, f"{text} > {num(margin)}", cs, (lo, hi), margin=margin
            )
        if hi <= margin:
            return self.bounded(
                cid, Status.PASS, f"{text} ≤ {num(margin)}", cs, (lo, hi), margin=margin
            )
        n_star = stats.n_to_resolve(cs.s, abs(est - margin), self.alpha(cid), self.ctx.n_opt, cs.n)
        if n_star is not None and n_star <= cs.n:
            n_star = None  # held open by an earlier look or the twin's interval: no simple ETA
        return self.bounded(
            cid,
            Status.INCONCLUSIVE,
            f"{text} straddles {num(margin)}",
            cs,
            (lo, hi),
            eta=self.eta(cs.n, n_star),
            margin=margin,
        )

    def lower_rule(self, cid: str, label: str, cs: stats.CS, margin: float) -> CheckResult:
        """Bad-if-low rule: PASS if the lower bound ≥ δ, FAIL if the upper bound < δ."""
        lo, hi = self.intersect(cid, cs.lower, cs.upper)
        text = f"{label} {num(cs.estimate)} [{num(lo)}, {num(hi)}]"
        if hi < margin:
            return self.bounded(cid, Status.FAIL, f"{text} < {num(margin)}", cs, (lo, hi))
        if lo >= margin:
            return self.bounded(cid, Status.PASS, f"{text} ≥ {num(margin)}", cs, (lo, hi))
        n_star = stats.n_to_resolve(
            cs.s, abs(cs.estimate - margin), self.alpha(cid), self.ctx.n_opt, cs.n
        )
        if n_star is not None and n_star <= cs.n:
            n_star = None
        return self.bounded(
            cid,
            Status.INCONCLUSIVE,
            f"{text} straddles {num(margin)}",
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
        text = f"{label} {num(est)} [{num(lo)}, {num(hi)}]"
        if -margin <= lo and hi <= margin:
            return self.bounded(cid, Status.PASS, f"{text} within ±{num(margin)}", cs, (lo, hi))
        if hi < -margin or lo > margin:
            return self.bounded(cid, Status.FAIL, f"{text} outside ±{num(margin)}", cs, (lo, hi))
        n_star = stats.n_to_resolve(
            s, abs(abs(est) - margin), self.alpha(cid), self.ctx.n_opt, cs.n
        )
        return self.bounded(
            cid,
            Status.INCONCLUSIVE,
            f"{text} overlaps ±{num(margin)}",
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
            f"{label} {num(plain.estimate)} [{num(p_lo)}, {num(p_hi)}] (margin {num(cp.margin)}); "
            f"{what} {num(excess.estimate)} [{num(e_lo)}, {num(e_hi)}] (margin {num(noise)})"
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
