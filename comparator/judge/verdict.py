"""The decision layer: per-check statuses → weighted score → PROMOTE / REJECT / KEEP_OBSERVING.

A look (:func:`judge`) reads only mergeable hourly aggregates and memory samples, never raw pairs, so
it costs O(hours). It is layered, as in VERDICT.md:

1. :mod:`comparator.judge.checks` gives each check a status with an effect size, interval and reason;
2. the score is ``100 · Σ w_g·credit / Σ w_g`` over the groups that apply (PASS 1, WARN 0.5, else 0);
3. the decision rule::

       if elapsed ≥ 1 h and any critical FAIL          → REJECT (early; name the check)
       elif elapsed < 24 h                             → KEEP_OBSERVING (pending checks + ETA)
       elif all critical PASS and score ≥ 90           → PROMOTE
       elif nothing INCONCLUSIVE or critical NODATA
            and score < 75                             → REJECT ("low score")
       elif elapsed < 48 h                             → KEEP_OBSERVING (minimums unmet: pending)
       else                                            → REJECT (inconclusive, or no data, at the
                                                                 maximum window, naming the checks)

A critical NODATA (minimums unmet, or a configured source that yields nothing) blocks PROMOTE and
ends in REJECT at the maximum window; a non-critical NODATA blocks nothing and is left out of the
score. A check that cannot get data at all (NA, e.g. no scrape target) is named in the reasons.

Repeated looks stay valid because the intervals are confidence sequences whose running intersection
is kept in the verdict state (with ``n_opt``, frozen after the first hour): a bound only tightens, so a
status never flips back. The state also keeps each check's decided status: should a later look
compute another one anyway (a check without an interval, such as a memory peak), the decided status
stays and the reason says DEFECT, and the log warns. A stored REJECT is final: later looks REJECT
with the original reasons. A look older than the stored one is never saved.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from datetime import UTC, datetime
from typing import Any, Protocol

from comparator.exceptions import UnknownExperiment
from comparator.judge import diagnostics, stats
from comparator.judge.checks import evaluate
from comparator.judge.decision import DECIDED, Decision, Verdict, decide
from comparator.judge.policy import Policy
from comparator.judge.results import CheckContext, CheckResult, Status, infer_task
from comparator.judge.segment_checks import evaluate_segments
from comparator.measure.aggregates import Aggregate, keys

__all__ = ["VerdictStore", "judge"]

STATE_VERSION = 1

log = logging.getLogger(__name__)


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
    """The five store methods a look uses (``comparator.store.store.Store`` implements them)."""

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
            pvalues.append(diagnostics.mcnemar_exact(b, c).pvalue)
    adjusted = stats.benjamini_hochberg(pvalues)
    return {n: float(p) for n, p in zip(names, adjusted, strict=True)}


def _keep_decided(
    checks: list[CheckResult], decided: dict[str, Any], at: str
) -> tuple[list[CheckResult], dict[str, list[str]]]:
    """Each check's decided status from the state stays; a look that computes another is a defect.

    Returns the checks and the decided statuses to store: {id: [status, iso time decided]}.
    """
    stored: dict[str, list[str]] = {
        k: [str(x) for x in v] for k, v in decided.items() if isinstance(v, list) and len(v) == 2
    }
    out = []
    for c in checks:
        prev = stored.get(c.id)
        if prev is not None and c.status is not Status.NA and c.status != prev[0]:
            note = (
                f"{prev[0]} since {prev[1]}; DEFECT: this look computes {c.status} "
                f"({c.reason}): the data changed under the check"
            )
            log.warning("check %s: %s", c.id, note)
            c = dataclasses.replace(c, status=Status(prev[0]), reason=note)
        elif prev is None and c.status in DECIDED:
            stored[c.id] = [str(c.status), at]
        out.append(c)
    return out, stored


async def judge(
    store: VerdictStore,
    experiment: str,
    policy: Policy,
    at: datetime | None = None,
    *,
    save: bool = True,
    memory_sources: frozenset[str] | None = None,
) -> Verdict:
    """Look at ``experiment`` as of ``at`` (default: now) and return the verdict.

    With ``save`` the verdict and the new state (n_opt, intervals, decided statuses) are stored,
    unless ``at`` is earlier than the last stored look: a look into the past never rewrites the
    present. ``memory_sources`` are the sides whose memory is scraped (the comparator's
    ``scrape``); they are kept in the state for looks that do not know them (None: the stored
    ones, else the sides seen in the samples).
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
    if memory_sources is None and isinstance(state.get("memory_sources"), list):
        memory_sources = frozenset(str(x) for x in state["memory_sources"])
    task = infer_task(agg, info.task or info.config.get("task"))
    ctx = CheckContext(policy, task, n_opt, elapsed, started, at, prior, memory_sources)
    checks, intervals = evaluate(agg, memory, ctx)
    segments, seg_intervals = evaluate_segments(agg, ctx)
    intervals.update(seg_intervals)
    decided: dict[str, list[str]] = {}
    if current and frozen:  # statuses are kept from the first hour on, as intervals are
        checks, decided = _keep_decided(checks, state.get("decided", {}), at.isoformat())
    decision, s, reasons = decide(checks, elapsed, policy, segments)
    if current and state.get("decision") == str(Decision.REJECT):
        # A decision never goes back from REJECT: the first REJECT's reasons are kept.
        first = state.get("rejected") or {}
        decision = Decision.REJECT
        first_reasons = [str(r) for r in first.get("reasons", [])]
        reasons = [
            f"rejected at {first.get('at', state.get('at'))} (a REJECT is final)",
            *first_reasons,
            *(
                f"critical check {c.id} failed: {c.reason}"
                for c in checks
                if c.critical
                and c.status is Status.FAIL
                and not any(f"check {c.id} " in r for r in first_reasons)
            ),
        ]
    verdict = Verdict(
        experiment,
        at,
        elapsed,
        decision,
        s,
        reasons,
        checks,
        policy.name,
        n_opt,
        _diagnostics(agg),
        segments=segments,
    )
    if save and current:
        rejected = state.get("rejected")
        if decision is Decision.REJECT and not rejected:
            rejected = {"at": at.isoformat(), "reasons": reasons}
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
            "decided": decided,
        }
        if rejected:
            new_state["rejected"] = rejected
        if memory_sources is not None:
            new_state["memory_sources"] = sorted(memory_sources)
        changed = await store.save_verdict(
            experiment, at, str(decision), verdict.to_json(), new_state
        )
        verdict = dataclasses.replace(verdict, decision_changed=changed)
    return verdict
