"""The memory checks of VERDICT.md: steady-state ratio, headroom to the limit, and leak.

They read the memory samples of a look, not the aggregate: samples after the warm-up are bucketed
by hour from the warm-up's end, and each check works on hourly medians (steady) or peaks (headroom,
leak). ``rss`` is the compared kind when it was sampled; headroom looks at every kind with a limit.
The checks are built on :class:`comparator.judge.look.Look`; :mod:`comparator.judge.checks` calls :func:`memory_results`.

Like every other check they keep intervals at the check's α and their running intersection:
memory_steady judges the median of hourly medians of each side with a rank-band CS (α/2 a side),
memory_leak the Theil–Sen slope's interval at confidence 1 − α. Where the data comes from matters:

* no scrape target configured (``CheckContext.memory_sources`` empty, or unknown and no samples):
  the checks are NA, and the verdict names them in its reasons;
* a configured target that yields no samples: NODATA naming the side — the critical memory checks
  then block PROMOTE, and at the maximum window the verdict REJECTs naming them;
* samples but no limit exported (``shadowtee_serving_memory_limit_bytes``): headroom and leak NA.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from datetime import timedelta

from scipy import stats as sps

from comparator.judge import stats
from comparator.judge.look import Look
from comparator.judge.results import CheckResult, Status, num

__all__ = ["MIB", "memory_results"]

MIB = 1024.0 * 1024.0
IDS = ("memory_steady", "memory_headroom", "memory_leak")
NO_LIMIT = "no memory limit known: no shadowtee_serving_memory_limit_bytes scraped"


def _hourly(
    look: Look, side: str, kind: str, fn: Callable[[list[float]], float]
) -> list[tuple[float, float]]:
    """(hour since the warm-up ended, ``fn`` of that hour's values) of one side and kind."""
    start = look.ctx.experiment_start + timedelta(minutes=look.p.window.warmup_minutes)
    buckets: dict[int, list[float]] = {}
    for s in look.samples:
        if s.side == side and s.kind == kind and start <= s.ts < look.ctx.at:
            buckets.setdefault(int((s.ts - start).total_seconds() // 3600), []).append(
                float(s.value_bytes)
            )
    return [(float(h), fn(v)) for h, v in sorted(buckets.items())]


def _limit(look: Look, kind: str) -> float | None:
    """The candidate's smallest reported limit of ``kind`` (None: no limit known)."""
    limits = [
        s.limit_bytes for s in look.samples if s.side == "cand" and s.kind == kind and s.limit_bytes
    ]
    return float(min(limits)) if limits else None


def memory_results(look: Look) -> list[CheckResult]:
    """memory_steady, memory_headroom and memory_leak, in that order."""
    enabled = {c: look.applies(c) for c in IDS}
    seen_sides = {s.side for s in look.samples}
    sources = look.ctx.memory_sources
    configured = seen_sides if sources is None else set(sources)
    if not configured:
        return [
            look.result(c, Status.NA, "no scrape target configured" if enabled[c] else "disabled")
            for c in IDS
        ]
    silent = sorted(configured - seen_sides)
    if silent:
        why = (
            f"scrape target {', '.join(silent)} configured but yielded no memory samples"
            " (unreachable, or no process_resident_memory_bytes)"
        )
        return [
            look.result(c, Status.NODATA, why)
            if enabled[c]
            else look.result(c, Status.NA, "disabled")
            for c in IDS
        ]
    kinds = {s.kind for s in look.samples}
    kind = "rss" if "rss" in kinds else sorted(kinds)[0]
    return [
        _steady(look, kind)
        if enabled["memory_steady"]
        else look.result(IDS[0], Status.NA, "disabled"),
        _headroom(look, kinds)
        if enabled["memory_headroom"]
        else look.result(IDS[1], Status.NA, "disabled"),
        _leak(look, kind) if enabled["memory_leak"] else look.result(IDS[2], Status.NA, "disabled"),
    ]


def _steady(look: Look, kind: str) -> CheckResult:
    """Median of hourly medians, cand/prod, with a CS on each side's median (α/2 a side)."""
    cid, cp = "memory_steady", look.p.check("memory_steady")
    need = look.p.minimums.memory_hours
    med = {side: _hourly(look, side, kind, statistics.median) for side in ("prod", "cand")}
    have = min(len(med["prod"]), len(med["cand"]))
    if have < need:
        return look.nodata(cid, have, need, "hourly memory medians on both sides")
    a = look.alpha(cid) / 2
    n_opt = max(look.p.window.min_hours, float(need))  # hourly values expected by the window
    cs = {
        side: stats.sample_quantile_cs([v for _, v in med[side]], 0.5, a, n_opt)
        for side in ("prod", "cand")
    }
    c, p = cs["cand"], cs["prod"]
    c_lo, p_lo = max(c.lower, 0.0), max(p.lower, 0.0)  # memory is never negative
    ratio = c.estimate / p.estimate if p.estimate > 0 else math.inf
    lo, hi = look.intersect(
        cid, c_lo / p.upper if p.upper > 0 else math.inf, c.upper / p_lo if p_lo > 0 else math.inf
    )
    d_lo, d_hi = look.intersect(f"{cid}.diff_mib", (c_lo - p.upper) / MIB, (c.upper - p_lo) / MIB)
    abs_mib = cp.abs_mib
    text = f"{kind} cand/prod {num(ratio)} [{num(lo)}, {num(hi)}], Δ [{num(d_lo)}, {num(d_hi)}] MiB"

    def done(status: Status, reason: str) -> CheckResult:
        return look.result(
            cid, status, f"{text}: {reason}", estimate=ratio, lower=lo, upper=hi, n=have
        )

    if hi <= cp.margin:
        return done(Status.PASS, f"ratio ≤ {num(cp.margin)}")
    if abs_mib is not None and d_hi <= abs_mib:
        return done(Status.PASS, f"Δ ≤ {num(abs_mib)} MiB")
    if lo > cp.margin and (abs_mib is None or d_lo > abs_mib):
        return done(Status.FAIL, f"ratio > {num(cp.margin)} and Δ > {num(abs_mib or 0.0)} MiB")
    return done(Status.INCONCLUSIVE, "not yet decided")


def _headroom(look: Look, kinds: set[str]) -> CheckResult:
    """Candidate peak / limit over every kind with a limit.

    The peak only grows, so a FAIL is final; a PASS is only given once the minimum window has
    elapsed (before that a peak within the margin is "so far", INCONCLUSIVE).
    """
    cid, cp = "memory_headroom", look.p.check("memory_headroom")
    worst: tuple[float, str] | None = None
    for k in sorted(kinds):
        lim = _limit(look, k)
        peaks = _hourly(look, "cand", k, max)
        if lim and peaks:
            frac = max(v for _, v in peaks) / lim
            worst = max(worst or (frac, k), (frac, k))
    if worst is None:
        if not any(_limit(look, k) for k in kinds):
            return look.result(cid, Status.NA, NO_LIMIT)
        return look.result(cid, Status.NODATA, "no candidate memory sample after the warm-up")
    frac, k = worst
    if frac > cp.margin:
        return look.result(
            cid, Status.FAIL, f"{k} peak {frac:.0%} of limit > {cp.margin:.0%}", estimate=frac
        )
    if look.ctx.elapsed_hours >= look.p.window.min_hours:
        return look.result(
            cid, Status.PASS, f"{k} peak {frac:.0%} of limit ≤ {cp.margin:.0%}", estimate=frac
        )
    return look.result(
        cid,
        Status.INCONCLUSIVE,
        f"{k} peak {frac:.0%} of limit so far (judged at {look.p.window.min_hours:g} h)",
        estimate=frac,
    )


def _leak(look: Look, kind: str) -> CheckResult:
    """How long until the candidate's peak reaches its limit, from the slope's interval.

    With H the headroom left (limit − highest peak) and s* = H / margin the slope that reaches the
    limit in ``margin`` hours: FAIL if the lower bound of the slope > s*, PASS if the upper ≤ s*.
    The slope interval is Theil–Sen's at confidence 1 − α of the check, intersected across looks.
    """
    cid, cp = "memory_leak", look.p.check("memory_leak")
    lim = _limit(look, kind)
    if lim is None:
        return look.result(cid, Status.NA, NO_LIMIT)
    peaks = _hourly(look, "cand", kind, max)
    need = look.p.minimums.memory_hours
    if len(peaks) < need:
        return look.nodata(cid, len(peaks), need, "hourly memory peaks")
    y, t = [v for _, v in peaks], [h for h, _ in peaks]
    ts = stats.theil_sen(y, t, confidence=1.0 - look.alpha(cid))
    # Theil–Sen's interval is two of the n(n−1)/2 pairwise slopes, at ranks (N ∓ z·σ)/2 with σ²
    # Kendall's variance n(n−1)(2n+5)/18. With few points those ranks fall outside the slopes and
    # scipy returns the extreme slopes instead, an interval far too narrow (3 peaks: 3 slopes,
    # z·σ ≈ 5): such a bound is no bound.
    n, n_slopes = len(y), len(y) * (len(y) - 1) / 2
    reach = float(sps.norm.ppf(1.0 - look.alpha(cid) / 2)) * math.sqrt(
        n * (n - 1) * (2 * n + 5) / 18
    )
    bounded = (n_slopes - reach) / 2 - 1 >= 0
    low, high = (ts.low_slope, ts.high_slope) if bounded else (-math.inf, math.inf)
    lo, hi = look.intersect(cid, low, high)
    headroom = max(lim - max(v for _, v in peaks), 0.0)
    s_star = headroom / cp.margin
    text = (
        f"slope {ts.slope / MIB:.1f} MiB/h [{lo / MIB:.1f}, {hi / MIB:.1f}], "
        f"{headroom / MIB:.0f} MiB left"
    )

    def done(status: Status, reason: str) -> CheckResult:
        # The Theil–Sen slope in bytes per hour, with its running interval, over the hourly peaks.
        return look.result(
            cid, status, f"{text}: {reason}", estimate=ts.slope, lower=lo, upper=hi, n=len(peaks)
        )

    if lo > s_star:
        return done(Status.FAIL, f"limit reached in < {cp.margin:.0f} h at the lower slope")
    if hi <= s_star:
        return done(Status.PASS, f"limit not reached in {cp.margin:.0f} h at the upper slope")
    return done(Status.INCONCLUSIVE, f"the slope's interval straddles {s_star / MIB:.1f} MiB/h")
