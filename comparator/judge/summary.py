"""The summary of an experiment over a time range, computed from hourly aggregates only.

It merges O(hours) stored aggregates, so its cost does not grow with the number of pairs. Latency
quantiles come from the merged log-bucket histograms (within 1% of the exact value); a timeout is a
right-censored latency ranked above every completed call, so a quantile that falls among the
timeouts reads as the deadline and is listed in ``censored``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from comparator.judge.results import coverage_counts
from comparator.measure.aggregates import OTHER, Aggregate, ddsketch_value, keys
from comparator.store.dialect import QUARANTINE, TALLY
from comparator.store.store import Store

__all__ = [
    "QUANTILES",
    "UnknownDimension",
    "latency_summary",
    "outcome_counts",
    "quarantine_counts",
    "segment_summary",
    "summarize",
]

QUANTILES = (0.5, 0.95, 0.99)
SIDES = ("prod", "cand", "twin")
OUTCOMES = ("ok", "error", "timeout", "shed", "skipped")


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def latency_summary(agg: Aggregate, side: str) -> dict[str, Any]:
    """n, censored and p50/p95/p99 (ms) of one side's completed + censored latencies."""
    hist = agg.hist(keys.latency(side))
    censored = agg.count(keys.censored(side))
    completed = sum(hist.values())
    total = completed + censored
    out: dict[str, Any] = {"n": completed, "censored": censored}
    deadline = agg.moment(f"lat.{side}.deadline")
    flagged = []
    buckets = sorted(hist.items())
    for q in QUANTILES:
        name = f"p{round(q * 100)}"
        if total == 0:
            out[name] = None
            continue
        rank = max(1, math.ceil(q * total))  # 1-based rank of the order statistic
        if rank > completed:
            out[name] = deadline.mean if deadline.n else None
            flagged.append(name)
            continue
        seen = 0
        for key, count in buckets:
            seen += count
            if seen >= rank:
                out[name] = ddsketch_value(key)
                break
    out["censored_quantiles"] = flagged
    return out


def outcome_counts(agg: Aggregate) -> dict[str, dict[str, int]]:
    return {
        side: {o: agg.count(keys.outcome(side, o)) for o in OUTCOMES}
        for side in SIDES
        if side != "twin" or any(agg.count(keys.outcome("twin", o)) for o in OUTCOMES)
    }


def _divergence(agg: Aggregate) -> dict[str, Any]:
    def mean(name: str) -> float | None:
        m = agg.moment(name)
        return m.mean if m.n else None

    return {
        "classification": {
            "n": agg.count(keys.CLS_N),
            "agreement": _ratio(agg.count(keys.CLS_AGREE), agg.count(keys.CLS_N)),
            "js_mean": mean(keys.JS),
            "js_gt_0_1": agg.count(keys.JS_TAIL),
        },
        "regression": {
            "n": agg.count(keys.REG_N),
            "diff_mean": mean(keys.REG_DIFF),
            "tol_exceed": agg.count(keys.REG_TOL_EXCEED),
        },
        "embedding": {
            "n": agg.count(keys.EMB_N),
            "cosine_mean": mean(keys.EMB_COS),
            "cos_lt_0_95": agg.count(keys.EMB_COS_TAIL),
        },
        "ranking": {"rbo_loss_mean": mean(keys.RANK_RBO_LOSS)},
        # pairs with both sides ok whose outputs were read and compared (the coverage check)
        "coverage": {
            "compared": (cov := coverage_counts(agg))[0],
            "both_ok": cov[1],
            "share": _ratio(*cov),
        },
        "invalid": {
            cell: agg.count(keys.paired(keys.INVALID, cell[0] == "1", cell[1] == "1"))
            for cell in ("00", "01", "10", "11")
        },
    }


def _block(agg: Aggregate) -> dict[str, Any]:
    return {
        "pairs": agg.count(keys.PAIRS),
        "outcomes": outcome_counts(agg),
        "agreement": _ratio(agg.count(keys.CLS_AGREE), agg.count(keys.CLS_N)),
        "latency_ms": {side: latency_summary(agg, side) for side in ("prod", "cand")},
    }


class UnknownDimension(ValueError):
    """``by`` names a segment dimension the experiment's pairs never carried."""


def _rate(agg: Aggregate, check: str) -> dict[str, Any]:
    """Paired rates of one bad/bad check (error, timeout, invalid): each side's and Δ."""
    cells = {
        c: agg.count(keys.paired(check, c[0] == "1", c[1] == "1")) for c in ("00", "01", "10", "11")
    }
    n = sum(cells.values())
    return {
        "n": n,
        "prod": _ratio(cells["10"] + cells["11"], n),
        "cand": _ratio(cells["01"] + cells["11"], n),
        "delta": _ratio(cells["01"] - cells["10"], n),
    }


def _segment_block(agg: Aggregate) -> dict[str, Any]:
    n = agg.count(keys.CLS_N)
    return {
        "pairs": agg.count(keys.PAIRS),
        "outcomes": outcome_counts(agg),
        "top1_disagreement": _ratio(n - agg.count(keys.CLS_AGREE), n),
        "js_gt_0_1": _ratio(agg.count(keys.JS_TAIL), agg.moment(keys.JS).n),
        "reg_diff_mean": agg.moment(keys.REG_DIFF).mean if agg.moment(keys.REG_DIFF).n else None,
        "emb_cos_lt_0_95": _ratio(agg.count(keys.EMB_COS_TAIL), agg.count(keys.EMB_N)),
        "error": _rate(agg, keys.ERROR),
        "timeout": _rate(agg, keys.TIMEOUT),
        "invalid": _rate(agg, keys.INVALID),
    }


def segment_summary(
    hours: list[tuple[datetime, Aggregate]], by: str, k: int = 10
) -> dict[str, Any]:
    """Per segment of dimension ``by`` (the top ``k`` by pairs over the range, the rest as
    "(other)"): totals and, per hour, each segment's pairs and top-1 disagreement (the heatmap).

    Raises :class:`UnknownDimension` when no hour carries ``by``.
    """
    total = Aggregate()
    for _, agg in hours:
        if by in agg.segments:
            total.add_segments(by, agg.segments[by])
    if by not in total.segments:
        known = sorted({d for _, a in hours for d in a.segments})
        raise UnknownDimension(
            f"by: no segment dimension {by!r} in this range (known: {', '.join(known) or 'none'})"
        )
    top = total.top_segments(by, k)
    kept = set(top) - {OTHER}
    per_hour = []
    for h, agg in hours:
        row: dict[str, Aggregate] = {}
        for value, seg in agg.segments.get(by, {}).items():
            row.setdefault(value if value in kept else OTHER, Aggregate()).merge(seg)
        per_hour.append(
            {
                "hour": h.isoformat(),
                "values": {
                    v: {
                        "pairs": a.count(keys.PAIRS),
                        "top1_disagreement": _ratio(
                            a.count(keys.CLS_N) - a.count(keys.CLS_AGREE), a.count(keys.CLS_N)
                        ),
                        "error_delta": _rate(a, keys.ERROR)["delta"],
                    }
                    for v, a in sorted(row.items())
                },
            }
        )
    return {
        "dimension": by,
        "k": k,
        "values": [{"value": v, **_segment_block(a)} for v, a in top.items()],
        "hours": per_hour,
    }


async def quarantine_counts(store: Store, name: str) -> dict[str, Any]:
    """Pairs of ``name`` the comparator refused into the quarantine (ever), by reason: the rows
    still kept plus those retention purged (``quarantine_tally``)."""
    q = (
        select(QUARANTINE.c.reason, func.count())
        .where(QUARANTINE.c.experiment == name)
        .group_by(QUARANTINE.c.reason)
    )
    purged = select(TALLY.c.reason, TALLY.c.n).where(TALLY.c.experiment == name)
    async with store.engine.connect() as conn:
        by_reason = {str(r): int(n) for r, n in (await conn.execute(q)).all()}
        for r, n in (await conn.execute(purged)).all():
            by_reason[str(r)] = by_reason.get(str(r), 0) + int(n)
    return {"total": sum(by_reason.values()), "by_reason": dict(sorted(by_reason.items()))}


async def summarize(
    store: Store,
    name: str,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    by: str | None = None,
    k: int = 10,
) -> dict[str, Any]:
    """The JSON summary of ``name`` over the hours in [start, end); with ``by``, also its
    segments of that dimension (:func:`segment_summary`)."""
    hours = await store.hourly_aggregates(name, start, end)
    segments = segment_summary(hours, by, k) if by is not None else None
    total = Aggregate.merged(agg for _, agg in hours)
    memory: dict[str, dict[str, Any]] = {}
    for s in await store.memory_samples(name, start, end):
        m = memory.setdefault(f"{s.side}.{s.kind}", {"n": 0, "max_bytes": 0.0})
        m["n"] += 1
        m["max_bytes"] = max(m["max_bytes"], s.value_bytes)
        m["last_bytes"] = s.value_bytes
        m["limit_bytes"] = s.limit_bytes
    return {
        "experiment": name,
        "from": start.isoformat() if start else None,
        "to": end.isoformat() if end else None,
        **_block(total),
        "divergence": _divergence(total),
        "memory": memory,
        "quarantine": await quarantine_counts(store, name),
        "hours": [{"hour": h.isoformat(), **_block(agg)} for h, agg in hours],
        **({"segments": segments} if segments is not None else {}),
    }
