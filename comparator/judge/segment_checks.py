"""Checks per segment: the critical checks with a confidence sequence, run on each segment's
aggregate; a segment's FAIL rejects the candidate, naming the segment (VERDICT.md, segments)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from comparator.judge.checks import rank_rbo, reg_bias, reg_tolerance
from comparator.judge.look import Look
from comparator.judge.results import CheckContext, CheckResult
from comparator.measure.aggregates import OTHER, Aggregate, keys

__all__ = ["SEGMENT_CHECKS", "SegmentResult", "evaluate_segments", "segment_dimensions"]


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
            look = Look(seg, (), sctx)
            look.alpha_critical = look.alpha_critical / (k * len(dims))
            for cid in SEGMENT_CHECKS:
                if not (look.applies(cid) and look.p.check(cid).critical):
                    continue
                result = _segment_check(look, seg, cid)
                out.append(SegmentResult(dim, value, seg.count(keys.PAIRS), result))
            if value != OTHER:
                intervals.update({prefix + key: v for key, v in look.intervals.items()})
    return out, intervals


def _segment_check(look: Look, agg: Aggregate, cid: str) -> CheckResult:
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
        return reg_bias(look)
    if cid == "reg_tolerance":
        return reg_tolerance(look)
    return rank_rbo(look)
