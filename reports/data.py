"""Gather everything one daily report shows, from the store, in a handful of bounded queries.

A report is built from *hourly aggregates* (O(hours) rows, whatever the traffic), the memory samples
of the day, the verdict as it stood at the end of the day, and a bounded sample of pairs (the most
divergent ones for drill-down, plus a fixed-size sample for the per-pair divergence histogram).
It never scans all pairs, so a day of 10^7 pairs costs the same as a day of 10^3.

The day is a calendar day in a time zone (UTC unless told): ``[00:00, 24:00)`` local time, turned
into a UTC interval. Hourly aggregates are keyed by the UTC hour they start in; an hour belongs to
the day when its start lies inside that interval (for zones with a half-hour offset, the day's edges
are rounded to the hour the aggregates were kept in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from comparator.judge.summary import quarantine_counts
from comparator.measure.aggregates import Aggregate
from comparator.store.reads import ExperimentInfo, MemorySample, StoredPair

if TYPE_CHECKING:
    from comparator.store.store import Store

__all__ = [
    "DIVERGENT_LIMIT",
    "SAMPLE_LIMIT",
    "CheckRow",
    "ReportData",
    "ReportError",
    "VerdictSummary",
    "day_bounds",
    "gather",
    "parse_tz",
]

DIVERGENT_LIMIT = 10  # rows in the "most divergent requests" table
SAMPLE_LIMIT = 2000  # pairs behind the per-pair divergence histogram


class ReportError(Exception):
    """A report cannot be made (unknown experiment, bad time zone, bad policy); ``str()`` is one line."""


@dataclass(frozen=True)
class CheckRow:
    """One line of the scorecard, copied out of the verdict's ``CheckResult``."""

    id: str
    group: str
    critical: bool
    status: str
    estimate: float | None
    lower: float | None
    upper: float | None
    margin: float | None
    n: int
    reason: str
    eta_hours: float | None


@dataclass(frozen=True)
class VerdictSummary:
    """The verdict at the end of the day, in plain values (no dependency on the verdict's types)."""

    decision: str
    score: float
    reasons: tuple[str, ...]
    policy_name: str
    at: datetime
    elapsed_hours: float
    checks: tuple[CheckRow, ...]
    # per-segment checks, as comparator.judge.segment_checks.SegmentResult.to_json() writes them
    segments: tuple[dict[str, Any], ...] = ()

    def check(self, check_id: str) -> CheckRow | None:
        return next((c for c in self.checks if c.id == check_id), None)


@dataclass(frozen=True)
class ReportData:
    """Everything a report renders. Built by :func:`gather`; pure data, safe to render many times."""

    experiment: str
    day: date
    tz: str
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    info: ExperimentInfo
    total: Aggregate  # the day, all hours merged
    hourly: tuple[tuple[datetime, Aggregate], ...]  # (UTC hour start, aggregate), sorted
    previous: Aggregate  # the day before, merged
    memory: tuple[MemorySample, ...]
    verdict: VerdictSummary | None
    divergent: tuple[StoredPair, ...]  # most divergent pairs of the day, most divergent first
    sample: tuple[StoredPair, ...]  # a bounded sample of the day's pairs
    # a bounded sample of the day before's pairs: the reference of the input drift
    previous_sample: tuple[StoredPair, ...] = ()
    # Pairs the comparator refused into its quarantine (whole experiment): {reason: count}.
    quarantine: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.total.count("pairs") == 0


def parse_tz(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``UTC``, ``Europe/Paris``), or :class:`ReportError` naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ReportError(
            f"--tz: unknown time zone {name!r} (use an IANA name such as UTC)"
        ) from None


def day_bounds(day: date, tz: str = "UTC") -> tuple[datetime, datetime]:
    """The UTC interval ``[start, end)`` of local calendar day ``day`` in zone ``tz``.

    Local midnights are converted separately, so a day with a daylight-saving change lasts 23 or
    25 hours. Bounds are floored to the UTC hour because aggregates are kept per UTC hour.
    """
    zone = parse_tz(tz)
    start = datetime.combine(day, time(), zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(), zone).astimezone(UTC)
    return _floor_hour(start), _floor_hour(end)


def _floor_hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


async def gather(
    store: Store,
    experiment: str,
    day: date,
    *,
    policy: Path | None = None,
    tz: str = "UTC",
) -> ReportData:
    """Read one experiment's day (and the day before) from ``store``."""
    start, end = day_bounds(day, tz)
    info = await store.get_experiment(experiment)
    if info is None:
        raise ReportError(f"--experiment: no experiment named {experiment!r} in the database")
    prev_start, _ = day_bounds(day - timedelta(days=1), tz)

    hourly = await store.hourly_aggregates(experiment, start, end)
    previous = await store.hourly_aggregates(experiment, prev_start, start)
    total = Aggregate.merged(agg for _, agg in hourly)
    memory = await store.memory_samples(experiment, start, end)
    divergent: Sequence[StoredPair] = ()
    sample: Sequence[StoredPair] = ()
    if total.count("pairs"):
        divergent = await store.sample_pairs(
            experiment, start, end, limit=DIVERGENT_LIMIT, most_divergent=True
        )
        sample = await store.sample_pairs(
            experiment, start, end, limit=SAMPLE_LIMIT, most_divergent=False
        )
    previous_sample: Sequence[StoredPair] = ()
    if sample and any(p.request_body is not None for p in sample):
        previous_sample = await store.sample_pairs(
            experiment, prev_start, start, limit=SAMPLE_LIMIT, most_divergent=False
        )
    # A day still in progress is judged as it stands now, not at its (future) end.
    at = min(end, datetime.now(UTC))
    verdict = await _judge(store, experiment, policy, at) if info.started_at < at else None
    return ReportData(
        experiment=experiment,
        day=day,
        tz=tz,
        start=start,
        end=end,
        info=info,
        total=total,
        hourly=tuple(sorted(hourly, key=lambda row: row[0])),
        previous=Aggregate.merged(agg for _, agg in previous),
        memory=tuple(sorted(memory, key=lambda m: (m.ts, m.side, m.kind))),
        verdict=verdict,
        divergent=tuple(divergent),
        sample=tuple(sorted(sample, key=lambda p: (p.ts, p.request_id))),
        previous_sample=tuple(sorted(previous_sample, key=lambda p: (p.ts, p.request_id))),
        quarantine=(await quarantine_counts(store, experiment))["by_reason"],
    )


async def _judge(
    store: Store, experiment: str, policy: Path | None, at: datetime
) -> VerdictSummary:
    """The verdict as it stood at ``at``, computed afresh and not saved (a report only reads)."""
    from comparator.judge.policy import PolicyError, load_policy
    from comparator.judge.verdict import judge

    try:
        pol = load_policy(policy)
    except PolicyError as exc:
        raise ReportError(f"--policy: {exc}") from None
    except FileNotFoundError:
        raise ReportError(f"--policy: file not found: {policy}") from None
    v = await judge(store, experiment, pol, at=at, save=False)
    return VerdictSummary(
        decision=str(v.decision),
        score=float(v.score),
        reasons=tuple(str(r) for r in v.reasons),
        policy_name=str(v.policy_name),
        at=v.at,
        elapsed_hours=float(v.elapsed_hours),
        checks=tuple(_check_row(c) for c in v.checks),
        segments=tuple(s.to_json() for s in v.segments),
    )


def _check_row(c: Any) -> CheckRow:
    return CheckRow(
        id=str(c.id),
        group=str(c.group),
        critical=bool(c.critical),
        status=str(c.status),
        estimate=_opt_float(c.estimate),
        lower=_opt_float(c.lower),
        upper=_opt_float(c.upper),
        margin=_opt_float(c.margin),
        n=int(c.n),
        reason=str(c.reason),
        eta_hours=_opt_float(c.eta_hours),
    )


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)
