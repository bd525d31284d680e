"""Test helpers for the verdict: an in-memory store with the five methods a look uses, and a seeded
generator of hourly aggregates built straight from distributions, for tests of single decisions.

Rates (A/A false REJECT, planted regressions REJECTed) are measured through the real ingest path
in ``tests/comparator/test_simulations.py``, never on these hand-built aggregates."""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from scipy import stats as sps

from comparator.measure.aggregates import GAMMA, Aggregate, Moments, keys
from comparator.store.reads import ExperimentInfo, MemorySample
from comparator.wire import Pair

T0 = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # for pairs through the real store


@dataclass
class FakeStore:
    """In-memory stand-in for comparator.store.store.Store (verdict methods only)."""

    experiments: dict[str, ExperimentInfo] = field(default_factory=dict)
    hours: dict[str, list[tuple[datetime, Aggregate]]] = field(default_factory=dict)
    memory: dict[str, list[MemorySample]] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdicts: list[tuple[str, datetime, str, dict[str, Any]]] = field(default_factory=list)

    def add(
        self, name: str, task: str | None = "classification", started_at: datetime = T0
    ) -> None:
        self.experiments[name] = ExperimentInfo(name, started_at, None, "1", "2", task, 0, {})
        self.hours.setdefault(name, [])
        self.memory.setdefault(name, [])

    async def get_experiment(self, name: str) -> ExperimentInfo | None:
        return self.experiments.get(name)

    async def hourly_aggregates(
        self, name: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[tuple[datetime, Aggregate]]:
        return [
            (h, a)
            for h, a in self.hours.get(name, [])
            if (start is None or h >= start) and (end is None or h < end)
        ]

    async def memory_samples(
        self, name: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[MemorySample]:
        return [
            s
            for s in self.memory.get(name, [])
            if (start is None or s.ts >= start) and (end is None or s.ts < end)
        ]

    async def load_verdict_state(self, name: str) -> dict[str, Any] | None:
        return self.states.get(name)

    async def save_verdict(
        self, name: str, at: datetime, decision: str, payload: dict[str, Any], state: dict[str, Any]
    ) -> bool:
        prev = self.states.get(name, {}).get("decision")
        stored_at = self.states.get(name, {}).get("at")
        if stored_at is not None and datetime.fromisoformat(stored_at) > at:
            return False  # as the store: an older look never overwrites a newer state
        self.states[name] = state
        self.verdicts.append((name, at, decision, payload))
        return prev != decision


@functools.lru_cache(maxsize=64)
def _lognormal_buckets(median_ms: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """DDSketch keys and their probabilities for a lognormal latency."""
    lo = math.floor(math.log(median_ms * math.exp(-4.5 * sigma)) / math.log(GAMMA))
    hi = math.ceil(math.log(median_ms * math.exp(4.5 * sigma)) / math.log(GAMMA))
    ks = np.arange(lo, hi + 1)
    cdf = sps.lognorm.cdf(GAMMA ** ks.astype(float), s=sigma, scale=median_ms)
    probs = np.diff(np.concatenate([[0.0], cdf]))
    probs[-1] += 1.0 - probs.sum()
    return ks, np.clip(probs, 0, None) / np.clip(probs, 0, None).sum()


@dataclass(frozen=True)
class Scenario:
    pairs_per_hour: int = 20_000
    p_error: float = 0.002
    cand_error_extra: float = 0.0
    p_timeout: float = 0.0005
    disagree: float = 0.02  # top-1 disagreement prod vs cand
    js_tail: float = 0.01
    latency_ms: float = 20.0
    latency_sigma: float = 0.4
    cand_latency_factor: float = 1.0
    deadline_ms: float = 1000.0
    n_classes: int = 10


def make_hour(rng: np.random.Generator, sc: Scenario) -> Aggregate:
    """One hour of an experiment, drawn from the scenario's distributions."""
    n = sc.pairs_per_hour
    agg = Aggregate()
    agg.add(keys.PAIRS, n)
    for name, p_prod, p_cand in (
        (keys.ERROR, sc.p_error, sc.p_error + sc.cand_error_extra),
        (keys.TIMEOUT, sc.p_timeout, sc.p_timeout),
        (keys.INVALID, 0.0, 0.0),
    ):
        probs = [
            (1 - p_prod) * (1 - p_cand),
            (1 - p_prod) * p_cand,
            p_prod * (1 - p_cand),
            p_prod * p_cand,
        ]
        n00, n01, n10, n11 = rng.multinomial(n, probs)
        for (a, b), c in zip(((0, 0), (0, 1), (1, 0), (1, 1)), (n00, n01, n10, n11), strict=True):
            agg.add(keys.paired(name, bool(a), bool(b)), int(c))
    ok = int(rng.binomial(n, (1 - sc.p_error) * (1 - sc.p_timeout)))
    agg.add(keys.CLS_N, ok)
    agg.add(keys.CLS_AGREE, ok - int(rng.binomial(ok, sc.disagree)))
    agg.add(keys.JS_TAIL, int(rng.binomial(ok, sc.js_tail)))
    cls_p = np.full(sc.n_classes, 1 / sc.n_classes)
    agg.add_cats(
        keys.CLASS_PROD, {str(i): int(c) for i, c in enumerate(rng.multinomial(ok, cls_p))}
    )
    agg.add_cats(
        keys.CLASS_CAND, {str(i): int(c) for i, c in enumerate(rng.multinomial(ok, cls_p))}
    )
    for side, factor in (("prod", 1.0), ("cand", sc.cand_latency_factor)):
        ks, probs = _lognormal_buckets(sc.latency_ms * factor, sc.latency_sigma)
        timeouts = int(rng.binomial(n, sc.p_timeout))
        counts = rng.multinomial(n - timeouts, probs)
        agg.add_hist(
            keys.latency(side), {int(k): int(c) for k, c in zip(ks, counts, strict=True) if c}
        )
        agg.add(keys.censored(side), timeouts)
        if timeouts:
            agg.add_moments(f"lat.{side}.deadline", Moments(timeouts, sc.deadline_ms, 0.0))
    return agg


def fill(store: FakeStore, name: str, rng: np.random.Generator, sc: Scenario, hours: int) -> None:
    """Append ``hours`` hourly aggregates after the experiment's start."""
    start = store.experiments[name].started_at
    have = len(store.hours[name])
    for h in range(have, have + hours):
        store.hours[name].append((start + timedelta(hours=h), make_hour(rng, sc)))


def memory_series(
    side: str,
    hours: int,
    base_mib: float,
    slope_mib_per_h: float,
    limit_mib: float | None,
    start: datetime = T0,
) -> list[MemorySample]:
    """One RSS sample every 10 minutes, growing linearly."""
    mib = 1024.0 * 1024.0
    out = []
    for i in range(hours * 6):
        ts = start + timedelta(minutes=10 * i + 1)
        value = (base_mib + slope_mib_per_h * i / 6) * mib
        out.append(
            MemorySample(ts, side, "rss", value, None if limit_mib is None else limit_mib * mib)
        )
    return out


def _body(probs: list[float]) -> dict[str, Any]:
    return {
        "outputs": [{"name": "probabilities", "shape": [1, 3], "datatype": "FP32", "data": probs}]
    }


def wire_pair(i: int, exp: str, *, cand_error: bool) -> Pair:
    prod = {
        "outcome": "ok",
        "status": 200,
        "latency_ms": 3.0 + (i % 7) * 0.1,
        "body": _body([0.7, 0.2, 0.1]),
    }
    cand: dict[str, Any] = {
        "outcome": "ok",
        "status": 200,
        "latency_ms": 3.1 + (i % 5) * 0.1,
        "body": _body([0.7, 0.2, 0.1]),
    }
    if cand_error:
        cand = {"outcome": "error", "status": 503, "latency_ms": 2.0}
    return Pair.model_validate(
        {
            "request_id": f"{exp}-{i}",
            "experiment": exp,
            "ts": START + timedelta(seconds=3.6 * i),
            "route": "/v2/models/m/infer",
            "request": {"sha256": hashlib.sha256(str(i).encode()).hexdigest()},
            "prod": prod,
            "candidate": cand,
        }
    )
