"""A known experiment for the report tests: generated wire pairs of a 10-class digit classifier.

``make_pairs`` draws a deterministic day of traffic (plus the day before, so warm-up is long over)
with known disagreements, timeouts, 5xx errors and shed tees; ``expected`` recomputes the numbers a
report must show directly from the pairs, independently of the store's aggregates.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from comparator.wire import Pair

EXPERIMENT = "digits-v1-vs-v2"
ROUTE = "/v2/models/digits/infer"
HOSTILE = "<script>alert(1)</script> \"quoted\" 'single' <b>bold</b> & <img src=x onerror=alert(2)>"
DEADLINE_MS = 250.0


def _probs(rng: random.Random, top: int) -> list[float]:
    raw = [rng.random() * 0.2 for _ in range(10)]
    raw[top] += 2.0 + rng.random()
    s = sum(raw)
    return [round(x / s, 6) for x in raw]


def _oip(probs: list[float]) -> dict[str, Any]:
    probs = [*probs[:-1], max(0.0, 1.0 - sum(probs[:-1]))]
    return {
        "model_name": "digits",
        "outputs": [{"name": "probabilities", "shape": [1, 10], "datatype": "FP32", "data": probs}],
    }


def make_pairs(
    day: date, *, per_hour: int = 30, seed: int = 7, hours: int = 24, experiment: str = EXPERIMENT
) -> list[Pair]:
    """``hours`` hours of pairs starting at ``day`` 00:00 UTC, ``per_hour`` an hour."""
    rng = random.Random(f"{seed}-{day.isoformat()}")
    start = datetime.combine(day, time(), UTC)
    out: list[Pair] = []
    for h in range(hours):
        for j in range(per_hour):
            ts = start + timedelta(hours=h, seconds=int(3600 * (j + rng.random()) / per_hour))
            rid = f"{day.isoformat()}-{h:02d}-{j:03d}"
            top = rng.randrange(10)
            prod_p = _probs(rng, top)
            roll = rng.random()
            cand: dict[str, Any]
            if roll < 0.04:
                cand = {"outcome": "timeout", "latency_ms": DEADLINE_MS, "error": "deadline 250 ms"}
            elif roll < 0.06:
                cand = {
                    "outcome": "ok",
                    "status": 500,
                    "latency_ms": round(rng.uniform(2, 9), 3),
                    "body": {"error": "boom"},
                }
            elif roll < 0.08:
                cand = {"outcome": "shed"}
            else:
                if rng.random() > 0.1:  # the same answer, slightly different probabilities
                    cand_p = [x * (1 + 0.1 * rng.random()) for x in prod_p]
                    cand_p = [round(x / sum(cand_p), 6) for x in cand_p]
                else:
                    cand_p = _probs(rng, (top + 1 + rng.randrange(9)) % 10)
                cand = {
                    "outcome": "ok",
                    "status": 200,
                    "latency_ms": round(rng.lognormvariate(math.log(7.0), 0.4), 3),
                    "body": _oip(cand_p),
                }
            request = {
                "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [h, j]}],
                "note": HOSTILE,
            }
            out.append(
                Pair.model_validate(
                    {
                        "request_id": rid,
                        "experiment": experiment,
                        "ts": ts,
                        "route": ROUTE,
                        "request": {
                            "sha256": hashlib.sha256(rid.encode()).hexdigest(),
                            "body": request,
                        },
                        "prod": {
                            "outcome": "ok",
                            "status": 200,
                            "model_version": "1",
                            "latency_ms": round(rng.lognormvariate(math.log(5.0), 0.3), 3),
                            "body": _oip(prod_p),
                        },
                        "candidate": {"model_version": "2", **cand},
                    }
                )
            )
    return out


def _argmax(body: Any) -> int:
    data = body["outputs"][0]["data"]
    return max(range(len(data)), key=lambda i: (data[i], -i))


def _order_stat(values: Sequence[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))]


def expected(pairs: Sequence[Pair]) -> dict[str, Any]:
    """The report's numbers recomputed from raw pairs (all after warm-up)."""
    n = len(pairs)
    cand_outcomes: dict[str, int] = {}
    for p in pairs:
        cand_outcomes[p.candidate.outcome.value] = (
            cand_outcomes.get(p.candidate.outcome.value, 0) + 1
        )
    both_ok = [p for p in pairs if p.candidate.outcome.value == "ok" and p.candidate.status == 200]
    agree = sum(_argmax(p.prod.body) == _argmax(p.candidate.body) for p in both_ok)
    confusion: dict[str, int] = {}
    for p in both_ok:
        k = f"{_argmax(p.prod.body)},{_argmax(p.candidate.body)}"
        confusion[k] = confusion.get(k, 0) + 1
    sent = [p for p in pairs if p.candidate.outcome.value not in ("shed", "skipped")]
    cand_err = sum(p.candidate.is_error for p in sent)
    cand_lat = [p.candidate.latency_ms for p in pairs if p.candidate.outcome.value == "ok"]
    cand_late = sum(p.candidate.outcome.value == "timeout" for p in pairs)
    prod_lat = [p.prod.latency_ms for p in pairs]
    out: dict[str, Any] = {
        "pairs": n,
        "cand_outcomes": cand_outcomes,
        "cls_n": len(both_ok),
        "disagreement_rate": 1 - agree / len(both_ok),
        "confusion": confusion,
        "cand_error_rate": cand_err / len(sent),
        "cand_completed": len(cand_lat),
        "cand_censored": cand_late,
    }
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        out[f"prod_{name}"] = _order_stat(prod_lat, q)
        ranked = sorted(cand_lat) + [math.inf] * cand_late
        out[f"cand_{name}"] = ranked[int(q * (len(ranked) - 1))]
    return out
