"""The facts of one report: plain numbers computed from :class:`ReportData`, shared by every format.

``facts(data)`` returns a JSON-ready dict (only str/int/float/bool/None/list/dict, no NaN). It is
exactly what ``report.json`` holds, and the HTML and Markdown renderers read their numbers from it,
so the three files can never disagree.

Latency quantiles come from the merged DDSketch histograms (relative error 1%). A timeout is a
right-censored latency: it ranks above every completed call, so a quantile that falls among the
timeouts is not identifiable and is reported as ``None`` (shown as "≥ deadline").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from comparator.judge.results import coverage_counts
from comparator.measure.aggregates import Aggregate, ddsketch_value, keys
from comparator.store.reads import StoredPair
from reports.data import CheckRow, ReportData
from reports.segments import drift_facts, segment_facts

__all__ = [
    "OUTCOMES",
    "QUANTILES",
    "SCHEMA",
    "SIDES",
    "cdf_points",
    "excerpt",
    "facts",
    "key_numbers",
    "quantile",
]

SCHEMA = "shadowtee.report/1"
SIDES = ("prod", "cand")
OUTCOMES = ("ok", "error", "timeout", "shed", "skipped")
QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
EXCERPT_CHARS = 300
SAMPLE_BINS = 20


def quantile(hist: Mapping[int, int], censored: int, q: float) -> float | None:
    """The ``q``-quantile of a log-bucket histogram plus ``censored`` calls ranked above all of it.

    Uses the order statistic at 0-based rank ``floor(q·(n−1))``; returns the bucket's
    representative value (within 1% of the true one), or ``None`` when that rank is a timeout.
    """
    n = sum(hist.values()) + censored
    if n == 0:
        return None
    rank = q * (n - 1)
    cum = 0
    for key in sorted(hist):
        cum += hist[key]
        if cum > rank:
            return ddsketch_value(key)
    return None


def cdf_points(hist: Mapping[int, int], censored: int) -> tuple[list[float], list[float]]:
    """Step points ``(latency_ms, P(latency ≤ x))`` of the empirical CDF; timeouts never reach 1."""
    n = sum(hist.values()) + censored
    xs: list[float] = []
    ys: list[float] = []
    cum = 0
    for key in sorted(hist):
        cum += hist[key]
        xs.append(ddsketch_value(key))
        ys.append(cum / n)
    return xs, ys


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _num(x: float | None) -> float | None:
    """JSON-safe float: NaN and infinities become ``None``."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def _paired(agg: Aggregate, check: str) -> dict[str, Any]:
    cells = {
        f"n{a}{b}": agg.count(keys.paired(check, bool(a), bool(b))) for a in (0, 1) for b in (0, 1)
    }
    n = sum(cells.values())
    prod_bad = cells["n10"] + cells["n11"]
    cand_bad = cells["n01"] + cells["n11"]
    return {
        "n": n,
        **cells,
        "prod_rate": _rate(prod_bad, n),
        "cand_rate": _rate(cand_bad, n),
        "delta": _rate(cand_bad - prod_bad, n),
    }


def _latency(agg: Aggregate, side: str) -> dict[str, Any]:
    hist = agg.hist(keys.latency(side))
    censored = agg.count(keys.censored(side))
    deadline = agg.moment(f"lat.{side}.deadline")
    out: dict[str, Any] = {
        "completed": sum(hist.values()),
        "censored": censored,
        "deadline_ms": _num(deadline.mean) if deadline.n else None,
    }
    for name, q in QUANTILES.items():
        out[name] = _num(quantile(hist, censored, q))
    return out


def _classification(agg: Aggregate) -> dict[str, Any] | None:
    n = agg.count(keys.CLS_N)
    if not n and not agg.cat(keys.CLASS_PROD):
        return None
    js = agg.moment(keys.JS)
    return {
        "n": n,
        "agree": agg.count(keys.CLS_AGREE),
        "disagreement_rate": _rate(n - agg.count(keys.CLS_AGREE), n),
        "js_tail": agg.count(keys.JS_TAIL),
        "js_tail_rate": _rate(agg.count(keys.JS_TAIL), n),
        "js_mean": _num(js.mean) if js.n else None,
        "class_hist": {side: _sorted_cats(agg.cat(f"cls.class.{side}")) for side in SIDES},
        "confusion": _sorted_cats(agg.cat(keys.CONFUSION)),
    }


def _sorted_cats(cats: Mapping[str, int]) -> dict[str, int]:
    """Categorical counts ordered numerically where the labels are numbers (2 before 10)."""

    def order(label: str) -> tuple[int, ...] | tuple[float, str]:
        try:
            return tuple(int(p) for p in label.split(","))
        except ValueError:
            return (math.inf, label)

    return {k: int(cats[k]) for k in sorted(cats, key=order)}


def _other_tasks(agg: Aggregate) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if agg.count(keys.REG_N):
        n = agg.count(keys.REG_N)
        diff = agg.moment(keys.REG_DIFF)
        out["regression"] = {
            "n": n,
            "mean_diff": _num(diff.mean),
            "sd_diff": _num(math.sqrt(diff.variance)),
            "tolerance_exceeded_rate": _rate(agg.count(keys.REG_TOL_EXCEED), n),
        }
    if agg.count(keys.EMB_N):
        n = agg.count(keys.EMB_N)
        out["embedding"] = {
            "n": n,
            "cosine_mean": _num(agg.moment(keys.EMB_COS).mean),
            "cosine_tail_rate": _rate(agg.count(keys.EMB_COS_TAIL), n),
        }
    rbo = agg.moment(keys.RANK_RBO_LOSS)
    if rbo.n:
        out["ranking"] = {"n": rbo.n, "rbo_loss_mean": _num(rbo.mean)}
    return out


def key_numbers(agg: Aggregate) -> dict[str, float | int | None]:
    """The handful of numbers compared day over day."""
    cls = _classification(agg) or {}
    return {
        "pairs": agg.count(keys.PAIRS),
        "cand_error_rate": _paired(agg, keys.ERROR)["cand_rate"],
        "cand_timeout_rate": _paired(agg, keys.TIMEOUT)["cand_rate"],
        "error_delta": _paired(agg, keys.ERROR)["delta"],
        "top1_disagreement": cls.get("disagreement_rate"),
        "js_tail_rate": cls.get("js_tail_rate"),
        "prod_p99_ms": _latency(agg, "prod")["p99"],
        "cand_p99_ms": _latency(agg, "cand")["p99"],
    }


def _proxy_drops(config: dict[str, Any]) -> tuple[int | None, str]:
    """Pairs the proxies dropped over the whole experiment, from their cumulative reports."""
    reports = config.get("proxy_drops") or {}
    if not reports:
        return None, "not reported by proxies"
    total = sum(int(n) for counts in reports.values() for n in counts.values())
    reasons: dict[str, int] = {}
    for counts in reports.values():
        for reason, n in counts.items():
            reasons[reason] = reasons.get(reason, 0) + int(n)
    detail = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
    return total, f"whole experiment, reported by {len(reports)} proxy process(es): {detail}"


def _traffic(
    agg: Aggregate,
    config: dict[str, Any] | None = None,
    quarantine: dict[str, int] | None = None,
) -> dict[str, Any]:
    pairs = agg.count(keys.PAIRS)
    cand = {o: agg.count(keys.outcome("cand", o)) for o in OUTCOMES}
    drops, note = _proxy_drops(config or {})
    return {
        "pairs": pairs,
        "teed": pairs - cand["shed"] - cand["skipped"],
        "outcomes": {
            side: {o: agg.count(keys.outcome(side, o)) for o in OUTCOMES}
            for side in (*SIDES, "twin")
            if side != "twin" or any(agg.count(keys.outcome("twin", o)) for o in OUTCOMES)
        },
        "paired": {
            check: _paired(agg, check) for check in (keys.ERROR, keys.TIMEOUT, keys.INVALID)
        },
        # Pairs with both sides ok whose outputs were read and compared (the coverage check).
        "coverage": dict(zip(("compared", "both_ok"), coverage_counts(agg), strict=True)),
        # Pairs never stored are known only from the proxies' own reports (POST .../drops).
        "spool_drops": drops,
        "spool_drops_note": note,
        # Pairs that reached the comparator but were refused one by one (whole experiment).
        "quarantined": sum((quarantine or {}).values()),
        "quarantined_by_reason": dict(sorted((quarantine or {}).items())),
    }


def _check_json(c: CheckRow) -> dict[str, Any]:
    return {
        "id": c.id,
        "group": c.group,
        "critical": c.critical,
        "status": c.status,
        "estimate": _num(c.estimate),
        "lower": _num(c.lower),
        "upper": _num(c.upper),
        "margin": _num(c.margin),
        "n": c.n,
        "reason": c.reason,
        "eta_hours": _num(c.eta_hours),
    }


def excerpt(body: Any, limit: int = EXCERPT_CHARS) -> str | None:
    """A short, stable text form of a stored JSON body (raw text: escape it before showing it)."""
    if body is None:
        return None
    text = body if isinstance(body, str) else json.dumps(body, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pair_json(p: StoredPair) -> dict[str, Any]:
    return {
        "request_id": p.request_id,
        "ts": _iso(p.ts),
        "route": p.route,
        "outcomes": [p.prod_outcome, p.cand_outcome],
        "statuses": [p.prod_status, p.cand_status],
        "latency_ms": [_num(p.prod_latency_ms), _num(p.cand_latency_ms)],
        "classes": [p.prod_class, p.cand_class],
        "divergence": _num(p.divergence),
        "js": _num(p.js),
        "invalid": p.invalid,
        "request_excerpt": excerpt(p.request_body),
        "prod_excerpt": excerpt(p.prod_body),
        "cand_excerpt": excerpt(p.cand_body),
    }


def _sample_hist(sample: tuple[StoredPair, ...]) -> dict[str, Any]:
    values = sorted(v for p in sample if (v := _num(p.divergence)) is not None)
    top = max(1.0, values[-1]) if values else 1.0
    edges = [top * i / SAMPLE_BINS for i in range(SAMPLE_BINS + 1)]
    counts = [0] * SAMPLE_BINS
    for v in values:
        counts[min(int(v / top * SAMPLE_BINS), SAMPLE_BINS - 1)] += 1
    return {"n": len(values), "edges": edges, "counts": counts}


def _memory(data: ReportData) -> list[dict[str, Any]]:
    out = []
    for side, kind in sorted({(m.side, m.kind) for m in data.memory}):
        vals = [m for m in data.memory if m.side == side and m.kind == kind]
        limits = [m.limit_bytes for m in vals if m.limit_bytes]
        out.append(
            {
                "side": side,
                "kind": kind,
                "n": len(vals),
                "min_bytes": min(m.value_bytes for m in vals),
                "max_bytes": max(m.value_bytes for m in vals),
                "last_bytes": vals[-1].value_bytes,
                "limit_bytes": max(limits) if limits else None,
            }
        )
    return out


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def facts(data: ReportData) -> dict[str, Any]:
    """Every number of the report, JSON-ready; ``report.json`` is this dict."""
    agg = data.total
    info = data.info
    v = data.verdict
    cls = _classification(agg)
    day_numbers = key_numbers(agg)
    prev_numbers = key_numbers(data.previous)
    return {
        "schema": SCHEMA,
        "experiment": data.experiment,
        "day": data.day.isoformat(),
        "tz": data.tz,
        "start": _iso(data.start),
        "end": _iso(data.end),
        "empty": data.empty,
        "models": {
            "prod_version": info.prod_version,
            "cand_version": info.cand_version,
            "task": info.task,
            "started_at": _iso(info.started_at),
        },
        "verdict": None
        if v is None
        else {
            "decision": v.decision,
            "score": _num(v.score),
            "reasons": list(v.reasons),
            "policy": v.policy_name,
            "at": _iso(v.at),
            "elapsed_hours": _num(v.elapsed_hours),
            "checks": [_check_json(c) for c in v.checks],
            "segments": list(v.segments),
        },
        "traffic": _traffic(agg, info.config, data.quarantine),
        "latency": {side: _latency(agg, side) for side in SIDES},
        "divergence": {
            "classification": cls,
            **_other_tasks(agg),
            "sample": _sample_hist(data.sample),
        },
        "hourly": [
            {
                "hour": _iso(hour),
                "pairs": a.count(keys.PAIRS),
                "cand_errors": _paired(a, keys.ERROR)["n01"] + _paired(a, keys.ERROR)["n11"],
                "cand_timeouts": a.count(keys.outcome("cand", "timeout")),
                **{f"{side}_censored": a.count(keys.censored(side)) for side in SIDES},
                "top1_disagreement": (_classification(a) or {}).get("disagreement_rate"),
                **{
                    f"{side}_{name}_ms": _latency(a, side)[name]
                    for side in SIDES
                    for name in ("p50", "p99")
                },
            }
            for hour, a in data.hourly
        ],
        "memory": _memory(data),
        "segments": segment_facts(data),
        "drift": drift_facts(data),
        "most_divergent": [_pair_json(p) for p in data.divergent],
        "previous_day": {
            "day": (data.day.fromordinal(data.day.toordinal() - 1)).isoformat(),
            "numbers": prev_numbers,
            "today": day_numbers,
        },
    }
