"""What a check says, and what it is judged with: statuses, results, the look's context.

Shared by the checks (:mod:`comparator.judge.checks`, :mod:`comparator.judge.memory_checks`,
:mod:`comparator.judge.segment_checks`), the verdict and the report.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from comparator.judge.policy import Policy
from comparator.measure.aggregates import Aggregate, keys

__all__ = [
    "DIVERGENCE_CHECKS",
    "TASK_CHECKS",
    "CheckContext",
    "CheckResult",
    "Status",
    "coverage_counts",
    "infer_task",
    "num",
]


#: Divergence checks per task; every other check applies to every task.
TASK_CHECKS: dict[str, tuple[str, ...]] = {
    "classification": ("top1_disagreement", "js_tail", "class_psi"),
    "regression": ("reg_bias", "reg_tolerance"),
    "embedding": ("emb_cosine_tail",),
    "ranking": ("rank_rbo",),
}
DIVERGENCE_CHECKS = {c for ids in TASK_CHECKS.values() for c in ids}


class Status(enum.StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"
    NODATA = "NODATA"
    NA = "NA"


@dataclass(frozen=True)
class CheckResult:
    id: str
    group: str
    critical: bool
    status: Status
    estimate: float | None
    lower: float | None
    upper: float | None
    margin: float | None
    n: int
    reason: str
    eta_hours: float | None

    def to_json(self) -> dict[str, Any]:
        def num(x: float | None) -> float | None:
            return x if x is None or math.isfinite(x) else None

        return {
            "id": self.id,
            "group": self.group,
            "critical": self.critical,
            "status": str(self.status),
            "estimate": num(self.estimate),
            "lower": num(self.lower),
            "upper": num(self.upper),
            "margin": self.margin,
            "n": self.n,
            "reason": self.reason,
            "eta_hours": self.eta_hours,
        }


@dataclass(frozen=True)
class CheckContext:
    """What a look knows besides the aggregate."""

    policy: Policy
    task: str | None
    n_opt: float
    elapsed_hours: float
    experiment_start: datetime
    at: datetime
    prior: dict[str, list[float]] = field(default_factory=dict)
    #: Sides ("prod", "cand") whose memory is scraped; None: unknown (the sides seen in samples).
    memory_sources: frozenset[str] | None = None


def infer_task(agg: Aggregate, configured: str | None) -> str | None:
    """The configured task, or the one whose counters are present (None: no model outputs seen)."""
    if configured in TASK_CHECKS:
        return configured
    if agg.count(keys.CLS_N):
        return "classification"
    if agg.count(keys.REG_N) or agg.moment(keys.REG_DIFF).n:
        return "regression"
    if agg.count(keys.EMB_N):
        return "embedding"
    if agg.moment(keys.RANK_RBO_LOSS).n:
        return "ranking"
    return None


def coverage_counts(agg: Aggregate) -> tuple[int, int]:
    """(pairs whose outputs were read and compared, pairs with both sides ok).

    Pairs with both sides ok are the ``invalid`` cells (counted over exactly those); compared ones
    are the divergence counters of whatever task the batches were read as.
    """
    both_ok = sum(
        agg.count(keys.paired(keys.INVALID, a, b))
        for a, b in ((False, False), (False, True), (True, False), (True, True))
    )
    compared = (
        agg.count(keys.CLS_N)
        + agg.count(keys.REG_N)
        + agg.count(keys.EMB_N)
        + agg.moment(keys.RANK_RBO_LOSS).n
    )
    return min(compared, both_ok), both_ok


def num(x: float) -> str:
    """A statistic as a reason writes it: 4 significant digits when small, 2 decimals when large."""
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.4g}" if abs(x) < 1e-2 and x != 0 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.4f}"
