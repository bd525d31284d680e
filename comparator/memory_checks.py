"""The memory checks of VERDICT.md: steady-state ratio, headroom to the limit, and leak.

They read the memory samples of a look, not the aggregate: samples after the warm-up are bucketed
by hour from the warm-up's end, and each check works on hourly medians (steady) or peaks (headroom,
leak). ``rss`` is the compared kind when it was sampled; headroom looks at every kind with a limit.
The checks are built on the look of :mod:`comparator.checks`, which calls :func:`memory_results`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from comparator import stats
from comparator.checks import CheckResult, Status, _f

if TYPE_CHECKING:
    from comparator.checks import _Look

__all__ = ["MIB", "memory_results"]

MIB = 1024.0 * 1024.0


def _hourly(
    look: _Look, side: str, kind: str, fn: Callable[[list[float]], float]
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


def _limit(look: _Look, kind: str) -> float | None:
    """The candidate's smallest reported limit of ``kind`` (None: no limit known)."""
    limits = [
        s.limit_bytes for s in look.samples if s.side == "cand" and s.kind == kind and s.limit_bytes
    ]
    return float(min(limits)) if limits else None


def memory_results(look: _Look) -> list[CheckResult]:
    """memory_steady, memory_headroom and memory_leak, in that order."""
    kinds = {s.kind for s in look.samples}
    if not kinds:
        ids = ("memory_steady", "memory_headroom", "memory_leak")
        return [
            look.result(c, Status.NA, "no memory samples" if look.applies(c) else "disabled")
            for c in ids
        ]
    kind = "rss" if "rss" in kinds else sorted(kinds)[0]
    out = []
    # steady: median of hourly medians
    cp = look.p.check("memory_steady")
    med = {side: _hourly(look, side, kind, statistics.median) for side in ("prod", "cand")}
    if not cp.enabled:
        out.append(look.result("memory_steady", Status.NA, "disabled"))
    elif not med["prod"] or not med["cand"]:
        out.append(
            look.result(
                "memory_steady", Status.NODATA, "no memory samples after warm-up on both sides"
            )
        )
    else:
        c = statistics.median(v for _, v in med["cand"])
        p = statistics.median(v for _, v in med["prod"])
        ratio, delta = (c / p if p > 0 else math.inf), (c - p) / MIB
        ok = ratio <= cp.margin or delta <= (cp.abs_mib or 0.0)
        reason = f"{kind} cand/prod {_f(ratio)} (Δ {delta:.0f} MiB) " + (
            "within margin" if ok else f"> {_f(cp.margin)} and Δ > {_f(cp.abs_mib or 0.0)} MiB"
        )
        out.append(
            look.result(
                "memory_steady",
                Status.PASS if ok else Status.FAIL,
                reason,
                estimate=ratio,
                n=len(med["cand"]),
            )
        )
    # headroom: candidate peak / limit, over every kind with a limit
    cp = look.p.check("memory_headroom")
    worst: tuple[float, str] | None = None
    for k in sorted(kinds):
        lim = _limit(look, k)
        peaks = _hourly(look, "cand", k, max)
        if lim and peaks:
            frac = max(v for _, v in peaks) / lim
            worst = max(worst or (frac, k), (frac, k))
    if not cp.enabled or worst is None:
        out.append(
            look.result(
                "memory_headroom",
                Status.NA,
                "disabled" if not cp.enabled else "no memory limit known",
            )
        )
    else:
        frac, k = worst
        st = Status.PASS if frac <= cp.margin else Status.FAIL
        out.append(
            look.result(
                "memory_headroom",
                st,
                f"{k} peak {frac:.0%} of limit {'≤' if st is Status.PASS else '>'} {cp.margin:.0%}",
                estimate=frac,
            )
        )
    out.append(_leak(look, kind))
    return out


def _leak(look: _Look, kind: str) -> CheckResult:
    """How long until the candidate's peak reaches its limit at the lower bound of the growth."""
    cid, cp = "memory_leak", look.p.check("memory_leak")
    lim = _limit(look, kind)
    if not cp.enabled or lim is None:
        return look.result(
            cid, Status.NA, "disabled" if not cp.enabled else "no memory limit known"
        )
    peaks = _hourly(look, "cand", kind, max)
    need = look.p.minimums.memory_hours
    if len(peaks) < need:
        return look.nodata(cid, len(peaks), need, "hourly memory peaks")
    ts = stats.theil_sen([v for _, v in peaks], [h for h, _ in peaks])
    headroom = lim - peaks[-1][1]
    slope_mib = ts.low_slope / MIB

    def done(status: Status, reason: str) -> CheckResult:
        # The Theil–Sen slope in bytes per hour, with its interval, over the hourly peaks.
        return look.result(
            cid,
            status,
            reason,
            estimate=ts.slope,
            lower=ts.low_slope,
            upper=ts.high_slope,
            n=len(peaks),
        )

    if ts.low_slope <= 0:
        return done(
            Status.PASS, f"no growth: slope {ts.slope / MIB:.1f} MiB/h, lower {slope_mib:.1f}"
        )
    hours = max(headroom, 0.0) / ts.low_slope
    st = Status.FAIL if hours < cp.margin else Status.PASS
    return done(
        st,
        f"limit reached in ≥ {hours:.0f} h at {slope_mib:.1f} MiB/h "
        f"{'<' if st is Status.FAIL else '≥'} {cp.margin:.0f} h",
    )
