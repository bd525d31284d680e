"""The CPU half of ingest, before any lock: a batch grouped by experiment, measured, folded into
hours and built into rows, against what this store last saw of each experiment.

:class:`comparator.store.writer.Ingest` adds the write; see there for how the write redoes a piece
of this only where the locked row says an assumption was wrong.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy.engine import Dialect

from comparator.ingest import Refused
from comparator.measure.aggregates import Aggregate
from comparator.measure.fold import fold
from comparator.measure.normalize import BatchMetrics, NormalizeConfig, measure
from comparator.store.dialect import insert_for
from comparator.store.pair_rows import pair_columns, pair_records
from comparator.wire import Pair

__all__ = [
    "KNOWN_TASKS",
    "MAX_AHEAD",
    "MAX_BACKDATE",
    "Assumed",
    "BatchPreparation",
    "LockedExperiment",
    "Part",
    "Prepared",
]

KNOWN_TASKS = ("classification", "regression", "embedding", "ranking")
MAX_BACKDATE = timedelta(hours=2)
MAX_AHEAD = timedelta(minutes=5)
ITEM_CHARS = 16 * 1024  # a 32 MiB batch of refused pairs stays a bounded write


def stamps(pairs: Sequence[Pair]) -> NDArray[np.float64]:
    """The pairs' ``ts`` as POSIX seconds, which keep the order of distinct microseconds: much
    cheaper to compare than aware datetimes one pair at a time."""
    return np.array([p.ts.timestamp() for p in pairs], dtype=np.float64)


def json_value(value: Any) -> Any:
    """A JSON column's value as read on the driver: text on SQLite, already decoded by the codec
    SQLAlchemy sets up on asyncpg connections."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def safe_text(text: str) -> str:
    """``text`` as valid UTF-8 without NUL, which every store takes."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def hour_of(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class LockedExperiment:
    """An experiment's row as locked by a write."""

    id: int
    started_at: datetime
    last_pair_at: datetime | None
    prod_version: str | None
    cand_version: str | None
    task: str | None


@dataclass(frozen=True)
class Assumed:
    """What a batch was measured against, outside the lock: the experiment's id (None before it
    is first stored), the reading rules and the start that places its warm-up."""

    experiment_id: int | None
    config: NormalizeConfig
    started_at: datetime


@dataclass
class Part:
    """One experiment's share of a batch, measured ahead of the write (see :meth:`Ingest.prepare`).

    ``pairs`` are in request-id order with their POSIX times; ``first`` names the versions.
    ``metrics``, ``hours`` and ``records`` hold for ``assumed`` and every pair of ``pairs``.
    """

    name: str
    pairs: list[Pair]
    times: NDArray[np.float64]
    earliest: datetime
    first: Pair
    assumed: Assumed
    metrics: BatchMetrics
    hours: dict[datetime, Aggregate]
    records: list[tuple[Any, ...]] | None


@dataclass(frozen=True)
class Prepared:
    """A validated batch measured and converted to rows, ready for :meth:`Ingest.write`."""

    received: int
    parts: tuple[Part, ...]
    refused: tuple[Refused, ...] = ()
    index: dict[int, int] = dataclasses.field(default_factory=dict)  # id(pair) -> batch index


class BatchPreparation:
    """The store's ingest settings and the CPU half of a batch's ingest (see :class:`Ingest`).

    ``sql_dialect`` is the engine's (its bind processors convert pair rows for the driver);
    ``config_for(experiment)`` gives the output reading rules; ``store_bodies`` keeps request and
    response bodies; ``raw_sample_rate`` is the hash fraction of raw pairs kept past retention.
    It owns one cache: what it last locked of each experiment (a hint, checked under the lock).
    """

    def __init__(
        self,
        sql_dialect: Dialect,
        config_for: Callable[[str], NormalizeConfig],
        *,
        store_bodies: bool = False,
        raw_sample_rate: float = 0.0,
        max_backdate: timedelta = MAX_BACKDATE,
        max_ahead: timedelta = MAX_AHEAD,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.sql_dialect = sql_dialect
        self.config_for = config_for
        self.store_bodies = store_bodies
        self.raw_sample_rate = raw_sample_rate
        self.max_backdate = max_backdate
        self.max_ahead = max_ahead
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        # name -> (id, task, started_at) as last locked here: a hint, checked under the lock.
        self._seen: dict[str, tuple[int, str | None, datetime]] = {}

    @property
    def dialect(self) -> str:
        return str(self.sql_dialect.name)

    def _insert(self, table: Any) -> Any:
        return insert_for(self.dialect, table)

    def _config(self, name: str, stored_task: str | None) -> NormalizeConfig:
        """The reading rules of a batch: an inferred task, once stored, holds for later batches."""
        cfg = self.config_for(name)
        if cfg.task == "auto" and stored_task:
            return dataclasses.replace(cfg, task=stored_task)
        return cfg

    def prepare(
        self,
        pairs: Sequence[Pair],
        refused: Sequence[Refused] = (),
        indexes: Sequence[int] | None = None,
    ) -> Prepared:
        """Measure a validated batch, fold it into hours and build its rows (CPU only).

        ``refused`` are the batch's pairs the caller refused, ``indexes`` the batch index of each
        of ``pairs`` (default: their position); pairs outside the window join ``refused``.
        """
        index = {id(p): i for p, i in zip(pairs, indexes or range(len(pairs)), strict=True)}
        out = list(refused)
        groups: dict[str, dict[str, Pair]] = {}
        for p in pairs:  # a request id repeated inside one batch counts once
            groups.setdefault(p.experiment, {}).setdefault(p.request_id, p)
        now = self.clock()
        parts = []
        for name in sorted(groups):
            g = groups[name]
            seen = self._seen.get(name)
            g = self._in_window(g, seen[2] if seen else None, now, index, out)
            if not g:
                continue
            # Pairs in request-id order, with their POSIX times (see stamps).
            batch = [g[rid] for rid in sorted(g)]
            times = stamps(batch)
            earliest = batch[int(np.argmin(times))].ts
            # versions from the first pair that names them
            first = next((p for p in g.values() if p.prod.model_version), next(iter(g.values())))
            if seen is None:
                assumed = Assumed(None, self._config(name, None), earliest)
            else:
                assumed = Assumed(seen[0], self._config(name, seen[1]), min(seen[2], earliest))
            part = Part(
                name, batch, times, earliest, first, assumed, *self._measure(batch, assumed, times)
            )
            parts.append(part)
        return Prepared(len(pairs) + len(refused), tuple(parts), tuple(out), index)

    def _in_window(
        self,
        group: dict[str, Pair],
        started: datetime | None,
        now: datetime,
        index: Mapping[int, int],
        refused: list[Refused],
    ) -> dict[str, Pair]:
        """The pairs of ``group`` inside the window (module docstring); the others to ``refused``.

        ``started`` is the experiment's first pair as known, ``None`` for one not stored yet (then
        only the future is refused: the first batch sets the start, and a replay may span days).
        """
        ahead = now + self.max_ahead
        floor = started - self.max_backdate if started is not None else None
        if floor is None:  # the first batch of an experiment sets its start (any span: replays)
            if all(p.ts <= ahead for p in group.values()):
                return group
            floor = min(p.ts for p in group.values())
        if all(floor <= p.ts <= ahead for p in group.values()):
            return group
        kept = {}
        for rid, p in group.items():
            if p.ts > ahead:
                reason, why = "future", f"more than {self.max_ahead} after the comparator's clock"
            elif p.ts < floor:
                reason = "too_old"
                why = f"more than {self.max_backdate} before the experiment's first pair"
            else:
                kept[rid] = p
                continue
            detail = f"ts {p.ts.isoformat()}: {why}"
            refused.append(
                Refused(index[id(p)], reason, detail, p.model_dump(mode="json"), p.experiment, rid)
            )
        return kept

    def _measure(
        self, batch: Sequence[Pair], assumed: Assumed, times: NDArray[np.float64]
    ) -> tuple[BatchMetrics, dict[datetime, Aggregate], list[tuple[Any, ...]] | None]:
        metrics = measure(batch, assumed.config)
        hours = fold(
            batch, metrics, experiment_start=assumed.started_at, config=assumed.config, stamps=times
        )
        records = None
        if assumed.experiment_id is not None:
            records = self._records(assumed.experiment_id, batch, metrics)
        return metrics, hours, records

    def _records(
        self, experiment_id: int, batch: Sequence[Pair], metrics: BatchMetrics
    ) -> list[tuple[Any, ...]]:
        cols = pair_columns(
            experiment_id,
            batch,
            metrics,
            store_bodies=self.store_bodies,
            sample_rate=self.raw_sample_rate,
        )
        return pair_records(cols, self.sql_dialect)
