"""A look's decision from its checks: each check's credit, the score, and PROMOTE, REJECT or
KEEP_OBSERVING with its reasons (VERDICT.md, "Decision")."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, assert_never

from comparator.judge.policy import Policy
from comparator.judge.results import CheckResult, Status
from comparator.judge.segment_checks import SegmentResult

__all__ = ["DECIDED", "Decision", "Verdict", "credit", "decide", "score"]

DECIDED = frozenset({Status.PASS, Status.WARN, Status.FAIL})


class Decision(enum.StrEnum):
    PROMOTE = "PROMOTE"
    REJECT = "REJECT"
    KEEP_OBSERVING = "KEEP_OBSERVING"


@dataclass(frozen=True)
class Verdict:
    experiment: str
    at: datetime
    elapsed_hours: float
    decision: Decision
    score: float
    reasons: list[str]
    checks: list[CheckResult]
    policy_name: str
    n_opt: float = 0.0
    diagnostics: dict[str, float] = field(default_factory=dict)
    decision_changed: bool = False  # True when this look was saved and changed the stored decision
    # per-segment critical checks (VERDICT.md "Segments"); a FAIL among them REJECTs
    segments: list[SegmentResult] = field(default_factory=list)

    def check(self, check_id: str) -> CheckResult:
        return next(c for c in self.checks if c.id == check_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "at": self.at.isoformat(),
            "elapsed_hours": round(self.elapsed_hours, 4),
            "decision": str(self.decision),
            "score": round(self.score, 2),
            "reasons": list(self.reasons),
            "checks": [c.to_json() for c in self.checks],
            "policy": self.policy_name,
            "n_opt": self.n_opt,
            "diagnostics": dict(self.diagnostics),
            "segments": [s.to_json() for s in self.segments],
        }


def credit(status: Status) -> float | None:
    """Score credit of a status; None for N/A (excluded from the score)."""
    match status:
        case Status.PASS:
            return 1.0
        case Status.WARN:
            return 0.5
        case Status.FAIL | Status.INCONCLUSIVE | Status.NODATA:
            return 0.0
        case Status.NA:
            return None
        case _:
            assert_never(status)


def score(checks: list[CheckResult], policy: Policy) -> float:
    """100 · Σ w_g·credit_g / Σ w_g, credit_g the mean credit of group g's applicable checks."""
    by_group: dict[str, list[float]] = {}
    for c in checks:
        if c.status is Status.NODATA and not c.critical:
            continue  # a non-critical check without data blocks nothing, the score included
        cr = credit(c.status)
        if cr is not None:
            by_group.setdefault(c.group, []).append(cr)
    total_w = sum(policy.weight(g) for g in by_group)
    if total_w <= 0:
        return 0.0
    return 100.0 * sum(policy.weight(g) * sum(v) / len(v) for g, v in by_group.items()) / total_w


def _pending(checks: list[CheckResult]) -> list[str]:
    out = []
    for c in checks:
        if c.status in (Status.NODATA, Status.INCONCLUSIVE):
            eta = "" if c.eta_hours is None else f", ~{c.eta_hours:.1f} h to resolve"
            out.append(f"pending {c.id} ({c.status}{eta}): {c.reason}")
    return out


def _not_judged(checks: list[CheckResult]) -> list[str]:
    """NA checks that would apply but cannot get data (no scrape target, no limit exported)."""
    return [
        f"not judged: {c.id} ({c.reason})"
        for c in checks
        if c.status is Status.NA and c.reason != "disabled" and not c.reason.startswith("only for ")
    ]


def decide(
    checks: list[CheckResult],
    elapsed_hours: float,
    policy: Policy,
    segments: list[SegmentResult] | None = None,
) -> tuple[Decision, float, list[str]]:
    """The decision rule of VERDICT.md; returns the decision, the score and the reasons.

    A segment check can only REJECT: its FAIL counts as a critical FAIL naming the segment; any
    other status of it (NODATA, INCONCLUSIVE) blocks nothing and leaves the score alone.
    """
    s = score(checks, policy)
    w = policy.window
    critical = [c for c in checks if c.critical and c.status is not Status.NA]
    failed = [c for c in critical if c.status is Status.FAIL]
    seg_failed = [g for g in segments or () if g.check.status is Status.FAIL]
    no_data = [c for c in critical if c.status is Status.NODATA]
    na = _not_judged(checks)
    if elapsed_hours >= w.early_reject_hours and (failed or seg_failed):
        return (
            Decision.REJECT,
            s,
            [f"critical check {c.id} failed: {c.reason}" for c in failed]
            + [
                f"critical check {g.check.id} failed in segment {g.name}: {g.check.reason}"
                for g in seg_failed
            ],
        )
    if elapsed_hours < w.min_hours:
        reasons = [
            f"window: {elapsed_hours:.2f} h of the minimum {w.min_hours:g} h "
            f"({w.min_hours - elapsed_hours:.2f} h to go)"
        ]
        return Decision.KEEP_OBSERVING, s, reasons + _pending(checks) + na
    if (
        all(c.status is Status.PASS for c in critical)
        and not seg_failed
        and s >= policy.score.promote
    ):
        return (
            Decision.PROMOTE,
            s,
            [f"all critical checks pass and score {s:.1f} ≥ {policy.score.promote:g}", *na],
        )
    inconclusive = [c for c in checks if c.status is Status.INCONCLUSIVE]
    if not inconclusive and not no_data and s < policy.score.reject:
        return (
            Decision.REJECT,
            s,
            [f"low score {s:.1f} < {policy.score.reject:g}"]
            + [
                f"{c.id} {c.status}: {c.reason}"
                for c in checks
                if c.status in (Status.FAIL, Status.WARN)
            ]
            + na,
        )
    if elapsed_hours < w.max_hours:
        return (
            Decision.KEEP_OBSERVING,
            s,
            [f"score {s:.1f}; observing up to {w.max_hours:g} h", *_pending(checks), *na],
        )
    if no_data:
        return (
            Decision.REJECT,
            s,
            [
                f"no data at the maximum window of {w.max_hours:g} h: "
                + ", ".join(c.id for c in no_data),
                *_pending(checks),
                *na,
            ],
        )
    judged = [
        f"{c.id} {c.status}: {c.reason}" for c in checks if c.status in (Status.FAIL, Status.WARN)
    ]
    head = (
        f"inconclusive at the maximum window of {w.max_hours:g} h"
        if inconclusive
        else f"no PROMOTE at the maximum window of {w.max_hours:g} h: score {s:.1f}"
    )
    return (Decision.REJECT, s, [head, *judged, *_pending(checks), *na])


# -- state -------------------------------------------------------------------------------------
