"""The report's segment section (table and segment × hour heatmap) and the drift of the window.

Segments come from the hourly aggregates' per-segment parts (``Aggregate.segments``) and the
verdict's per-segment checks; the table is sorted by how far each segment's interval lies beyond
its margin (VERDICT.md "Segments"). Drift compares the day with the day before: the PSI of
production's predicted-class mix, and, when request bodies are stored, the PSI of each numeric
input feature over a bounded sample of pairs (bins: deciles of the day before). Drift informs:
it never changes the decision; above :data:`PSI_WARN` the report warns that the window may not be
representative.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from comparator.judge import stats
from comparator.judge.summary import segment_summary
from comparator.measure.aggregates import keys, signed_value
from comparator.store.reads import StoredPair
from reports.data import ReportData

__all__ = ["FEATURES_SHOWN", "PSI_WARN", "SEGMENTS_K", "drift_facts", "segment_facts"]

SEGMENTS_K = 10  # segments per dimension in the report (the policy's default k)
PSI_WARN = 0.1  # PSI at or above this: a moderate shift (≥ 0.25: a large one)
MIN_CLASS_PAIRS = 200  # per day, for the prediction-mix PSI
MIN_FEATURE_VALUES = 100  # per day and feature
MAX_FEATURES = 256  # numeric leaves read per request body
FEATURES_SHOWN = 8


def _distance(c: dict[str, Any]) -> float:
    d = c.get("distance")
    return -math.inf if d is None else float(d)


def segment_facts(data: ReportData) -> list[dict[str, Any]]:
    """Per dimension: the top segments with their worst check, sorted by distance from the
    margin (beyond it first), and the heatmap of top-1 disagreement per segment and hour."""
    hours = list(data.hourly)
    dims = sorted({d for _, a in hours for d in a.segments})
    checks = data.verdict.segments if data.verdict is not None else ()
    out = []
    for dim in dims:
        summary = segment_summary(hours, dim, SEGMENTS_K)
        rows = []
        for v in summary["values"]:
            mine = [c for c in checks if c["dimension"] == dim and c["value"] == v["value"]]
            worst = max(mine, key=_distance) if mine else None
            rows.append(
                {
                    "value": v["value"],
                    "pairs": v["pairs"],
                    "top1_disagreement": v["top1_disagreement"],
                    "error_delta": v["error"]["delta"],
                    "checks": mine,
                    "worst": worst,
                }
            )
        rows.sort(key=lambda r: (-_distance(r["worst"] or {}), -r["pairs"], r["value"]))
        values = [r["value"] for r in rows]
        heat = {
            "hours": [h["hour"] for h in summary["hours"]],
            "values": values,
            "cells": [
                [(h["values"].get(v) or {}).get("top1_disagreement") for h in summary["hours"]]
                for v in values
            ],
            "pairs": [
                [(h["values"].get(v) or {}).get("pairs", 0) for h in summary["hours"]]
                for v in values
            ],
        }
        out.append({"dimension": dim, "rows": rows, "heatmap": heat})
    return out


def _level(psi: float | None) -> str | None:
    if psi is None:
        return None
    return "large" if psi >= 0.25 else "moderate" if psi >= PSI_WARN else "stable"


def _numeric_leaves(doc: Any) -> Iterator[tuple[str, float]]:
    """(JSON pointer, value) of at most MAX_FEATURES finite numbers in ``doc``; an OIP input's
    values are keyed ``/inputs/{name}/{flat index}``."""
    budget = MAX_FEATURES
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack and budget > 0:
        path, node = stack.pop()
        if isinstance(node, bool):
            continue
        if isinstance(node, int | float):
            if math.isfinite(node):
                budget -= 1
                yield path, float(node)
        elif isinstance(node, dict):
            for k, v in reversed(list(node.items())):
                if path == "" and k == "inputs" and isinstance(v, list):
                    for inp in reversed(v):
                        if isinstance(inp, dict) and isinstance(inp.get("name"), str):
                            data = inp.get("data")
                            flat = _flat(data) if isinstance(data, list) else []
                            stack += [
                                (f"/inputs/{inp['name']}/{n}", x)
                                for n, x in reversed(list(enumerate(flat)))
                            ]
                elif k not in ("shape", "datatype", "parameters"):
                    stack.append((f"{path}/{k}", v))
        elif isinstance(node, list):
            stack += [(f"{path}/{n}", v) for n, v in reversed(list(enumerate(node)))]


def _flat(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    todo = [data]
    while todo and len(out) < MAX_FEATURES:
        item = todo.pop()
        if isinstance(item, list):
            todo += reversed(item)
        else:
            out.append(item)
    return out


def _features(sample: Sequence[StoredPair]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for p in sample:
        if p.request_body is None:
            continue
        for name, x in _numeric_leaves(p.request_body):
            out.setdefault(name, []).append(x)
    return out


def _feature_psi(before: list[float], today: list[float]) -> float | None:
    a, b = np.asarray(before), np.asarray(today)
    edges = np.unique(np.quantile(a, np.linspace(0.1, 0.9, 9)))
    if edges.size == 0 or (np.all(a == a[0]) and np.all(b == a[0])):
        return 0.0
    pa = np.bincount(np.searchsorted(edges, a, side="right"), minlength=edges.size + 1)
    pb = np.bincount(np.searchsorted(edges, b, side="right"), minlength=edges.size + 1)
    return stats.psi(pa.astype(float), pb.astype(float))


def _binned_outputs_psi(before: dict[int, int], today: dict[int, int]) -> float:
    """PSI of production's regression outputs (signed log buckets) in the deciles of the day
    before."""
    values = np.array([signed_value(k) for k in before])
    weights = np.array(list(before.values()), dtype=float)
    order = np.argsort(values)
    cum = np.cumsum(weights[order]) / weights.sum()
    edges = np.unique(values[order][np.searchsorted(cum, np.linspace(0.1, 0.9, 9))])

    def binned(h: dict[int, int]) -> NDArray[np.float64]:
        v = np.array([signed_value(k) for k in h])
        idx = np.searchsorted(edges, v, side="left")
        w = np.array(list(h.values()), dtype=np.float64)
        return np.bincount(idx, weights=w, minlength=edges.size + 1).astype(np.float64)

    return stats.psi(binned(before), binned(today))


def drift_facts(data: ReportData) -> dict[str, Any]:
    """Day-over-day PSI of production's prediction mix (classes, or binned regression outputs)
    and of numeric input features."""
    prev, today = data.previous.cat(keys.CLASS_PROD), data.total.cat(keys.CLASS_PROD)
    n_prev, n_today = sum(prev.values()), sum(today.values())
    mix: float | None = None
    what = "classes"
    if n_prev >= MIN_CLASS_PAIRS and n_today >= MIN_CLASS_PAIRS:
        bins = sorted(set(prev) | set(today))
        mix = stats.psi([prev.get(b, 0) for b in bins], [today.get(b, 0) for b in bins])
    elif not n_prev and not n_today:
        hp, ht = data.previous.hist(keys.REG_PROD_HIST), data.total.hist(keys.REG_PROD_HIST)
        n_prev, n_today = sum(hp.values()), sum(ht.values())
        what = "binned outputs"
        if n_prev >= MIN_CLASS_PAIRS and n_today >= MIN_CLASS_PAIRS:
            mix = _binned_outputs_psi(hp, ht)
    features: list[dict[str, Any]] = []
    before, now = _features(data.previous_sample), _features(data.sample)
    for name in sorted(set(before) & set(now)):
        a, b = before[name], now[name]
        if len(a) >= MIN_FEATURE_VALUES and len(b) >= MIN_FEATURE_VALUES:
            psi = _feature_psi(a, b)
            if psi is not None:
                features.append({"feature": name, "psi": psi, "n": [len(a), len(b)]})
    features.sort(key=lambda f: (-f["psi"], f["feature"]))
    warnings = []
    if mix is not None and mix >= PSI_WARN:
        warnings.append(
            f"production's prediction mix moved from the day before (PSI {mix:.3f} ≥ {PSI_WARN:g}):"
            " this window may not be representative"
        )
    shifted = [f for f in features if f["psi"] >= PSI_WARN]
    if shifted:
        warnings.append(
            f"{len(shifted)} numeric input feature(s) moved from the day before (PSI ≥ "
            f"{PSI_WARN:g}, largest {shifted[0]['feature']} at {shifted[0]['psi']:.3f}): this "
            "window may not be representative"
        )
    return {
        "prediction_mix": {
            "psi": mix,
            "level": _level(mix),
            "n": [n_prev, n_today],
            "of": what,
        },
        "features": features[:FEATURES_SHOWN],
        "features_compared": len(features),
        "warnings": warnings,
    }
