"""Pair rows for the ``pairs`` table: a validated batch and its metrics as SQL columns.

Kept apart from the store because it is pure (no I/O): per-pair metrics arrive as numpy arrays and
leave as column lists with NULL for "not applicable" (NaN, a class of −1), built without a Python
loop over the metric values. :func:`pair_records` turns the columns into the tuples a bulk load
takes (PostgreSQL ``COPY``, SQLite ``executemany``), each value converted by the column type's own
SQLAlchemy bind processor for the dialect, so the stored values are those an ORM insert would write.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
from sqlalchemy import Boolean, Table
from sqlalchemy.engine import Dialect

from comparator.measure.normalize import BatchMetrics
from comparator.store.models import PairRow
from comparator.wire import Pair
from contract import sampled

__all__ = ["COLUMNS", "pair_columns", "pair_records", "sqlite_utc_text", "subset"]

PAIRS = cast(Table, PairRow.__table__)


COLUMNS = tuple(c.name for c in PAIRS.columns)  # the order of pair_records' tuples
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@functools.cache
def _bind_processors(dialect: Dialect) -> tuple[Callable[[Any], Any] | None, ...]:
    """Each column's bind processor for ``dialect`` (None where values pass unchanged).

    Boolean columns carry Python ``bool`` or None (:func:`pair_columns`), which both drivers bind
    as they are — sqlite3 stores the same 1/0 as SQLAlchemy's ``int()`` — so they skip it.
    """
    return tuple(
        None
        if isinstance(c.type, Boolean)
        else c.type.dialect_impl(dialect).bind_processor(dialect)
        for c in PAIRS.columns
    )


def sqlite_utc_text(values: Sequence[datetime]) -> list[str]:
    """Aware datetimes as :class:`~comparator.store.models.UTCDateTime` binds them on SQLite — naive UTC
    text ``YYYY-MM-DD HH:MM:SS.ffffff`` — converted as one numpy array rather than one by one."""
    micros = np.array([(v - _EPOCH) // _MICROSECOND for v in values], dtype=np.int64)
    text = np.datetime_as_string(micros.astype("datetime64[us]"), unit="us")
    return [t.replace("T", " ") for t in text.tolist()]


def pair_records(cols: dict[str, list[Any]], dialect: Dialect) -> list[tuple[Any, ...]]:
    """One tuple per pair, values in :data:`COLUMNS` order and in the driver's form for ``dialect``.

    A column that is NULL throughout (bodies not kept, no twin) skips its processor; on SQLite the
    timestamps take :func:`sqlite_utc_text`, which writes the same text as their processor.
    """
    converted = []
    for name, process in zip(COLUMNS, _bind_processors(dialect), strict=True):
        values = cols[name]
        if name == "ts" and dialect.name == "sqlite":
            values = sqlite_utc_text(values)
        elif process is not None and any(v is not None for v in values):
            values = [None if v is None else process(v) for v in values]
        converted.append(values)
    return list(zip(*converted, strict=True))


def subset(metrics: BatchMetrics, idx: Sequence[int]) -> BatchMetrics:
    """The metrics of the pairs at ``idx`` (every per-pair array indexed, scalars kept)."""
    ix = np.asarray(idx, dtype=np.int64)
    changes = {
        f.name: getattr(metrics, f.name)[ix]
        for f in dataclasses.fields(metrics)
        if isinstance(getattr(metrics, f.name), np.ndarray)
    }
    return dataclasses.replace(metrics, **changes)


def pair_columns(
    experiment_id: int,
    batch: Sequence[Pair],
    m: BatchMetrics,
    *,
    store_bodies: bool,
    sample_rate: float,
) -> dict[str, list[Any]]:
    """The batch as columns (name -> values, NULL as None), metrics converted without a loop."""

    def floats(a: Any) -> list[Any]:
        out = a.astype(object)
        out[~np.isfinite(a)] = None
        return list(out.tolist())

    def classes(a: Any) -> list[Any]:
        out = a.astype(object)
        out[a < 0] = None
        return list(out.tolist())

    def strings(values: list[Any]) -> list[Any]:  # StrEnum members as plain str, in C
        return list(np.array(values, dtype=str).tolist())

    agree = (m.top1_agree > 0.5).astype(object)
    agree[np.isnan(m.top1_agree)] = None
    bodies = store_bodies
    rate = sample_rate
    n = len(batch)
    return {
        "experiment_id": [experiment_id] * n,
        "request_id": [p.request_id for p in batch],
        "ts": [p.ts for p in batch],
        "route": [p.route for p in batch],
        "request_sha256": [p.request.sha256 for p in batch],
        "prod_outcome": strings([p.prod.outcome for p in batch]),
        "cand_outcome": strings([p.candidate.outcome for p in batch]),
        "twin_outcome": [str(p.twin.outcome) if p.twin else None for p in batch],
        "prod_status": [p.prod.status for p in batch],
        "cand_status": [p.candidate.status for p in batch],
        "prod_latency_ms": [p.prod.latency_ms for p in batch],
        "cand_latency_ms": [p.candidate.latency_ms for p in batch],
        "prod_version": [p.prod.model_version for p in batch],
        "cand_version": [p.candidate.model_version for p in batch],
        "prod_class": classes(m.prod_class),
        "cand_class": classes(m.cand_class),
        "top1_agree": agree.tolist(),
        "js": floats(m.js),
        "abs_diff": floats(m.abs_diff),
        "cosine": floats(m.cosine),
        "rbo_loss": floats(m.rbo_loss),
        "prod_invalid": m.prod_invalid.astype(bool).tolist(),
        "cand_invalid": m.cand_invalid.astype(bool).tolist(),
        "divergence": floats(m.divergence),
        "sampled": [sampled(p.request_id, rate) for p in batch] if rate > 0 else [False] * n,
        "request_body": [p.request.body for p in batch] if bodies else [None] * n,
        "prod_body": [p.prod.body for p in batch] if bodies else [None] * n,
        "cand_body": [p.candidate.body for p in batch] if bodies else [None] * n,
    }
