"""Mergeable partial aggregates: what the store keeps per (experiment, hour) and the verdict reads.

Every look at an experiment merges O(hours) of these instead of scanning O(pairs) rows. An aggregate
holds four kinds of mergeable state, all keyed by the names below:

* ``counters``  — integers that add (outcomes per side, paired discordant cells, threshold counts);
* ``moments``   — count, mean and M2 = Σ(v − mean)² of a per-pair value, merged with Chan's formula;
* ``hists``     — sparse log-bucket histograms (DDSketch mapping, relative error 1%) of latencies;
* ``cats``      — sparse categorical histograms (predicted classes per side, confusion cells).

Segments (VERDICT.md "Segments") nest in the same row: ``segments[dimension][value]`` is the
aggregate of that segment's pairs, without latency or class histograms. A dimension keeps at
most :data:`SEGMENT_CAP` values per row; merging beyond that folds the values with the fewest pairs
into :data:`OTHER`, so a row stays bounded whatever the cardinality. A look picks the top K of the
window (:meth:`Aggregate.top_segments`).

The aggregate is pure data with no I/O; ``to_json``/``from_json`` give the form stored in SQL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DDSKETCH_ALPHA",
    "GAMMA",
    "OTHER",
    "SEGMENT_CAP",
    "Aggregate",
    "Moments",
    "ddsketch_key",
    "ddsketch_value",
    "keys",
    "signed_value",
]

DDSKETCH_ALPHA = 0.01
GAMMA = (1 + DDSKETCH_ALPHA) / (1 - DDSKETCH_ALPHA)
_LOG_GAMMA = math.log(GAMMA)
# Latencies at or below this (ms) share one bucket, key MIN_KEY; keeps keys small and finite.
MIN_VALUE_MS = 1e-3
MIN_KEY = math.ceil(math.log(MIN_VALUE_MS) / _LOG_GAMMA)
#: Values of one segment dimension kept per stored row; the rest merge into OTHER.
SEGMENT_CAP = 64
#: The segment of every value outside the kept ones.
OTHER = "(other)"


def ddsketch_key(x: float) -> int:
    """Bucket key of a positive value: ceil(log_γ x). 12.3 → 126, 250 → 277 (VERDICT.md)."""
    if x <= MIN_VALUE_MS:
        return MIN_KEY
    return math.ceil(math.log(x) / _LOG_GAMMA)


def signed_value(key: int) -> float:
    """The upper edge of a signed log bucket (``comparator.measure.fold.signed_keys``)."""
    negative = key % 2
    return (-1.0 if negative else 1.0) * GAMMA ** ((key - negative) // 2)


def ddsketch_value(key: int) -> float:
    """Representative value of a bucket, within 1% of every value in it: 2γ^k / (γ + 1)."""
    return 2.0 * GAMMA**key / (GAMMA + 1.0)


class keys:
    """The names used in aggregates. Sides are ``prod``, ``cand`` and ``twin``."""

    PAIRS = "pairs"  # every stored pair
    # outcomes: f"{side}.{outcome}" for outcome in ok/error/timeout/shed/skipped, e.g. "cand.timeout"
    # paired bad/bad cells for error, timeout, invalid: f"{check}.n00|n01|n10|n11"
    # (first digit: production bad, second: candidate bad; both sides were sent)
    ERROR = "error"
    TIMEOUT = "timeout"
    INVALID = "invalid"
    # classification, over pairs where both sides are ok and valid:
    CLS_N = "cls.n"
    CLS_AGREE = "cls.agree"  # top-1 equal
    JS_TAIL = "cls.js_gt_0_1"  # JS distance (base 2) > 0.1
    JS = "cls.js"  # moments of the JS distance
    CLASS_PROD = "cls.class.prod"  # cats: predicted class histogram
    CLASS_CAND = "cls.class.cand"
    CONFUSION = "cls.confusion"  # cats: "prod_class,cand_class" -> count
    # twin noise floor (same definitions, production vs twin)
    TWIN_CLS_N = "twin.cls.n"
    TWIN_CLS_AGREE = "twin.cls.agree"
    TWIN_JS_TAIL = "twin.cls.js_gt_0_1"
    TWIN_JS = "twin.cls.js"  # moments of the JS distance, production vs twin
    # regression: d = y_c − y_p, and y_p itself (for sd(y_p))
    REG_DIFF = "reg.diff"  # moments
    REG_PROD = "reg.prod"  # moments
    REG_N = "reg.n"
    REG_TOL_EXCEED = "reg.tol_exceed"
    REG_PROD_HIST = "reg.prod.hist"  # hists: production's outputs, signed log buckets
    # embedding
    EMB_N = "emb.n"
    EMB_COS = "emb.cos"  # moments
    EMB_COS_TAIL = "emb.cos_lt_0_95"
    # ranking
    RANK_RBO_LOSS = "rank.rbo_loss"  # moments of 1 − RBO(p=0.9)
    # latency (after warm-up): hists f"lat.{side}" of completed calls, censored count f"lat.{side}.censored"
    # with the deadline value in moments f"lat.{side}.deadline"

    @staticmethod
    def outcome(side: str, outcome: str) -> str:
        return f"{side}.{outcome}"

    @staticmethod
    def paired(check: str, prod_bad: bool, cand_bad: bool) -> str:
        return f"{check}.n{int(prod_bad)}{int(cand_bad)}"

    @staticmethod
    def latency(side: str) -> str:
        return f"lat.{side}"

    @staticmethod
    def censored(side: str) -> str:
        return f"lat.{side}.censored"


@dataclass(frozen=True, slots=True)
class Moments:
    """Count, mean and M2 of a sample; merges exactly (Chan et al.)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: Iterable[float]) -> Moments:
        vals = [float(v) for v in values]
        if not vals:
            return cls()
        n = len(vals)
        mean = math.fsum(vals) / n
        return cls(n, mean, math.fsum((v - mean) ** 2 for v in vals))

    def merge(self, other: Moments) -> Moments:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / n
        m2 = self.m2 + other.m2 + delta * delta * self.n * other.n / n
        return Moments(n, mean, m2)

    @property
    def variance(self) -> float:
        """Population variance (divide by n), the plug-in s² of the confidence sequences."""
        return self.m2 / self.n if self.n else 0.0

    @property
    def total(self) -> float:
        return self.mean * self.n


@dataclass(slots=True)
class Aggregate:
    counters: dict[str, int] = field(default_factory=dict)
    moments: dict[str, Moments] = field(default_factory=dict)
    hists: dict[str, dict[int, int]] = field(default_factory=dict)
    cats: dict[str, dict[str, int]] = field(default_factory=dict)
    segments: dict[str, dict[str, Aggregate]] = field(default_factory=dict)

    # -- building -------------------------------------------------------------------------------
    def add(self, name: str, n: int = 1) -> None:
        if n:
            self.counters[name] = self.counters.get(name, 0) + n

    def add_moments(self, name: str, m: Moments) -> None:
        if m.n:
            self.moments[name] = self.moments.get(name, Moments()).merge(m)

    def add_hist(self, name: str, bucket_counts: Mapping[int, int]) -> None:
        h = self.hists.setdefault(name, {})
        for k, c in bucket_counts.items():
            h[int(k)] = h.get(int(k), 0) + int(c)

    def add_cats(self, name: str, counts: Mapping[str, int]) -> None:
        h = self.cats.setdefault(name, {})
        for k, c in counts.items():
            h[str(k)] = h.get(str(k), 0) + int(c)

    def merge(self, other: Aggregate) -> Aggregate:
        """Fold ``other`` into this aggregate in place and return it."""
        for k, v in other.counters.items():
            self.add(k, v)
        for k, m in other.moments.items():
            self.add_moments(k, m)
        for k, h in other.hists.items():
            self.add_hist(k, h)
        for k, c in other.cats.items():
            self.add_cats(k, c)
        for dim, values in other.segments.items():
            self.add_segments(dim, values)
        return self

    def add_segments(self, dim: str, values: Mapping[str, Aggregate]) -> None:
        """Merge per-value aggregates of ``dim``; beyond :data:`SEGMENT_CAP` values, the ones
        with the fewest pairs merge into :data:`OTHER`."""
        mine = self.segments.setdefault(dim, {})
        for value, agg in values.items():
            mine.setdefault(value, Aggregate()).merge(agg)
        if len(mine) > SEGMENT_CAP:
            self.segments[dim] = _capped(mine, SEGMENT_CAP)

    @classmethod
    def merged(cls, parts: Iterable[Aggregate]) -> Aggregate:
        out = cls()
        for p in parts:
            out.merge(p)
        return out

    # -- reading --------------------------------------------------------------------------------
    def count(self, name: str) -> int:
        return self.counters.get(name, 0)

    def moment(self, name: str) -> Moments:
        return self.moments.get(name, Moments())

    def hist(self, name: str) -> dict[int, int]:
        return self.hists.get(name, {})

    def cat(self, name: str) -> dict[str, int]:
        return self.cats.get(name, {})

    def top_segments(self, dim: str, k: int) -> dict[str, Aggregate]:
        """The ``k − 1`` values of ``dim`` with the most pairs and, merged, the rest as
        :data:`OTHER`: at most ``k`` segments."""
        return _capped(self.segments.get(dim, {}), k)

    # -- storage --------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "counters": dict(sorted(self.counters.items())),
            "moments": {k: [m.n, m.mean, m.m2] for k, m in sorted(self.moments.items())},
            "hists": {
                k: {str(b): c for b, c in sorted(h.items())} for k, h in sorted(self.hists.items())
            },
            "cats": {k: dict(sorted(h.items())) for k, h in sorted(self.cats.items())},
        }
        if self.segments:
            out["segments"] = {
                dim: {v: a.to_json() for v, a in sorted(values.items())}
                for dim, values in sorted(self.segments.items())
            }
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Aggregate:
        return cls(
            counters={k: int(v) for k, v in data.get("counters", {}).items()},
            moments={
                k: Moments(int(v[0]), float(v[1]), float(v[2]))
                for k, v in data.get("moments", {}).items()
            },
            hists={
                k: {int(b): int(c) for b, c in h.items()} for k, h in data.get("hists", {}).items()
            },
            cats={
                k: {str(b): int(c) for b, c in h.items()} for k, h in data.get("cats", {}).items()
            },
            segments={
                str(dim): {str(v): cls.from_json(a) for v, a in values.items()}
                for dim, values in data.get("segments", {}).items()
            },
        )


def _capped(values: Mapping[str, Aggregate], k: int) -> dict[str, Aggregate]:
    """At most ``k`` segments: the ``k − 1`` largest by pairs (ties by value), the rest as OTHER."""
    if len(values) <= k:
        return dict(values)
    ranked = sorted(
        (v for v in values if v != OTHER), key=lambda v: (-values[v].count(keys.PAIRS), v)
    )
    out = {v: values[v] for v in ranked[: k - 1]}
    rest = Aggregate()
    for v in ranked[k - 1 :]:
        rest.merge(values[v])
    if OTHER in values:
        rest.merge(values[OTHER])
    out[OTHER] = rest
    return out
