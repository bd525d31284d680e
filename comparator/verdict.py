"""The decision layer: per-check statuses → weighted score → PROMOTE / REJECT / KEEP_OBSERVING.

A look (:func:`judge`) reads only mergeable hourly aggregates and memory samples, never raw pairs, so
it costs O(hours). It is layered, as in VERDICT.md:

1. :mod:`comparator.checks` gives each check a status with an effect size, interval and reason;
2. the score is ``100 · Σ w_g·credit / Σ w_g`` over the groups that apply (PASS 1, WARN 0.5, else 0);
3. the decision rule::

       if elapsed ≥ 1 h and any critical FAIL          → REJECT (early; name the check)
       elif elapsed < 24 h or minimums unmet           → KEEP_OBSERVING (pending checks + ETA)
       elif all critical PASS and score ≥ 90           → PROMOTE
       elif nothing INCONCLUSIVE and score < 75        → REJECT ("low score")
       elif elapsed < 48 h                             → KEEP_OBSERVING
       else                                            → REJECT ("inconclusive at the maximum window")

Repeated looks stay valid because the intervals are confidence sequences whose running intersection
is kept in the verdict state (with ``n_opt``, frozen after the first hour): a bound only tightens, so a
status never flips back.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, assert_never

from comparator import stats
from comparator.aggregates import Aggregate, keys
from comparator.checks import CheckContext, CheckResult, Status, evaluate, infer_task
from comparator.exceptions import UnknownExperiment
from comparator.policy import Policy

__all__ = [
    "CheckResult",
    "Decision",
    "Status",
    "UnknownExperiment",
    "Verdict",
    "VerdictStore",
    "credit",
    "decide",
    "judge",
    "score",
]

STATE_VERSION = 1


class Decision(enum.StrEnum):
    PROMOTE = "PROMOTE"
    REJECT = "REJECT"
    KEEP_OBSERVING = "KEEP_OBSERVING"


class _Experiment(Protocol):
    @property
    def started_at(self) -> datetime: ...
    @property
    def task(self) -> str | None: ...
    @property
    def config(self) -> dict[str, Any]: ...


class _Memory(Protocol):
    @property
    def ts(self) -> datetime: ...
    @property
    def side(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def value_bytes(self) -> float: ...
    @property
    def limit_bytes(self) -> float | None: ...


class VerdictStore(Protocol):
    """The five store methods a look uses (``comparator.store.Store`` implements them)."""

    async def get_experiment(self, name: str) -> Any: ...
    async def hourly_aggregates(
        self, name: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[tuple[datetime, Aggregate]]: ...
    async def memory_samples(
        self, name: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[Any]: ...
    async def load_verdict_state(self, name: str) -> dict[str, Any] | None: ...
    async def save_verdict(
        self, name: str, at: datetime, decision: str, payload: dict[str, Any], state: dict[str, Any]
    ) -> bool: ...


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


def decide(
    checks: list[CheckResult], elapsed_hours: float, policy: Policy
) -> tuple[Decision, float, list[str]]:
    """The decision rule of VERDICT.md; returns the decision, the score and the reasons."""
    s = score(checks, policy)
    w = policy.window
    critical = [c for c in checks if c.critical and c.status is not Status.NA]
    failed = [c for c in critical if c.status is Status.FAIL]
    nodata = [c for c in checks if c.status is Status.NODATA]
    if elapsed_hours >= w.early_reject_hours and failed:
        return Decision.REJECT, s, [f"critical check {c.id} failed: {c.reason}" for c in failed]
    if elapsed_hours < w.min_hours or nodata:
        reasons = []
        if elapsed_hours < w.min_hours:
            reasons.append(
                f"window: {elapsed_hours:.2f} h of the minimum {w.min_hours:g} h "
                f"({w.min_hours - elapsed_hours:.2f} h to go)"
            )
        return Decision.KEEP_OBSERVING, s, reasons + _pending(checks)
    if all(c.status is Status.PASS for c in critical) and s >= policy.score.promote:
        return (
            Decision.PROMOTE,
            s,
            [f"all critical checks pass and score {s:.1f} ≥ {policy.score.promote:g}"],
        )
    inconclusive = [c for c in checks if c.status is Status.INCONCLUSIVE]
    if not inconclusive and s < policy.score.reject:
        return (
            Decision.REJECT,
            s,
            [f"low score {s:.1f} < {policy.score.reject:g}"]
            + [
                f"{c.id} {c.status}: {c.reason}"
                for c in checks
                if c.status in (Status.FAIL, Status.WARN)
            ],
        )
    if elapsed_hours < w.max_hours:
        return (
            Decision.KEEP_OBSERVING,
            s,
            [f"score {s:.1f}; observing up to {w.max_hours:g} h", *_pending(checks)],
        )
    return (
        Decision.REJECT,
        s,
        [f"inconclusive at the maximum window of {w.max_hours:g} h", *_pending(checks)],
    )


# -- state -------------------------------------------------------------------------------------
def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _enc(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON (and PostgreSQL jsonb) has no infinities


def _dec(x: Any, default: float) -> float:
    return default if x is None else float(x)


def _load_intervals(state: dict[str, Any]) -> dict[str, list[float]]:
    raw = state.get("intervals", {})
    return {k: [_dec(v[0], -math.inf), _dec(v[1], math.inf)] for k, v in raw.items()}


def _n_opt(
    policy: Policy, state: dict[str, Any], pairs: int, elapsed: float
) -> tuple[float, bool, str]:
    """n_opt, whether it is frozen, and where it came from."""
    if policy.n_opt > 0:
        return policy.n_opt, True, "policy"
    if state.get("n_opt_frozen"):
        return float(state["n_opt"]), True, str(state.get("n_opt_source", "first hour"))
    horizon = policy.window.min_hours
    if pairs <= 0 or elapsed <= 0:
        return float(max(policy.minimums.units, 1)), False, "provisional (no pairs yet)"
    estimate = max(pairs / elapsed * horizon, float(policy.minimums.units))
    if elapsed >= 1.0:
        return (
            estimate,
            True,
            f"first hour: {pairs} pairs in {elapsed:.2f} h → {estimate:.0f} by {horizon:g} h",
        )
    return estimate, False, "provisional (before the first hour)"


def _diagnostics(agg: Aggregate) -> dict[str, float]:
    """McNemar p-values on the paired cells, BH-adjusted: reported, never used to gate."""
    names, pvalues = [], []
    for name in (keys.ERROR, keys.TIMEOUT, keys.INVALID):
        b, c = agg.count(keys.paired(name, True, False)), agg.count(keys.paired(name, False, True))
        if b + c:
            names.append(f"mcnemar_{name}")
            pvalues.append(stats.mcnemar_exact(b, c).pvalue)
    adjusted = stats.benjamini_hochberg(pvalues)
    return {n: float(p) for n, p in zip(names, adjusted, strict=True)}


async def judge(
    store: VerdictStore,
    experiment: str,
    policy: Policy,
    at: datetime | None = None,
    *,
    save: bool = True,
) -> Verdict:
    """Look at ``experiment`` as of ``at`` (default: now) and return the verdict.

    With ``save`` the verdict and the new state (n_opt, intervals) are stored, unless ``at`` is
    earlier than the last stored look: a look into the past never rewrites the present.
    """
    info: _Experiment | None = await store.get_experiment(experiment)
    if info is None:
        raise UnknownExperiment(f"no experiment named {experiment!r}")
    at = _utc(at) if at is not None else datetime.now(UTC)
    started = _utc(info.started_at)
    elapsed = max(0.0, (at - started).total_seconds() / 3600.0)
    rows = await store.hourly_aggregates(experiment, end=at)
    agg = Aggregate.merged(a for _, a in rows)
    memory: list[_Memory] = await store.memory_samples(experiment, end=at)
    state = await store.load_verdict_state(experiment) or {}
    last_at = datetime.fromisoformat(state["at"]) if "at" in state else None
    current = last_at is None or at >= last_at
    n_opt, frozen, source = _n_opt(policy, state, agg.count(keys.PAIRS), elapsed)
    prior = _load_intervals(state) if current and frozen and state.get("n_opt") == n_opt else {}
    task = infer_task(agg, info.task or info.config.get("task"))
    ctx = CheckContext(policy, task, n_opt, elapsed, started, at, prior)
    checks, intervals = evaluate(agg, memory, ctx)
    decision, s, reasons = decide(checks, elapsed, policy)
    verdict = Verdict(
        experiment, at, elapsed, decision, s, reasons, checks, policy.name, n_opt, _diagnostics(agg)
    )
    if save and current:
        new_state = {
            "version": STATE_VERSION,
            "at": at.isoformat(),
            "n_opt": n_opt,
            "n_opt_frozen": frozen,
            "n_opt_source": source,
            "policy": policy.name,
            "decision": str(decision),
            # intervals are only kept once n_opt is frozen: intersecting CSs tuned for different
            # n_opt would not be one sequence
            "intervals": {k: [_enc(v[0]), _enc(v[1])] for k, v in intervals.items()}
            if frozen
            else {},
        }
        changed = await store.save_verdict(
            experiment, at, str(decision), verdict.to_json(), new_state
        )
        verdict = dataclasses.replace(verdict, decision_changed=changed)
    return verdict
