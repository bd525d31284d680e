"""Pair rows for the ``pairs`` table: a validated batch and its metrics as SQL columns.

Kept apart from the store because it is pure (no I/O): per-pair metrics arrive as numpy arrays and
leave as column lists with NULL for "not applicable" (NaN, a class of −1), built without a Python
loop over the metric values. On PostgreSQL the columns go in as arrays through one
``INSERT … SELECT * FROM unnest(…)``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from sqlalchemy import Table, text
from sqlalchemy.engine import Dialect

from comparator.models import PairRow
from comparator.wire import Pair

if TYPE_CHECKING:
    from comparator.normalize import BatchMetrics

__all__ = ["pair_columns", "sampled", "subset", "unnest_insert"]

PAIRS = cast(Table, PairRow.__table__)


@functools.cache
def unnest_insert(pg: Dialect) -> Any:
    """``INSERT INTO pairs (…) SELECT * FROM unnest(CAST(:c AS type[]), …) ON CONFLICT DO NOTHING``."""
    names = [c.name for c in PAIRS.columns]
    arrays = ", ".join(
        f"CAST(:{c.name} AS {c.type.dialect_impl(pg).compile(dialect=pg)}[])" for c in PAIRS.columns
    )
    return text(
        f"INSERT INTO pairs ({', '.join(names)}) SELECT * FROM unnest({arrays}) "
        "ON CONFLICT (experiment_id, request_id) DO NOTHING RETURNING request_id"
    )


def sampled(request_id: str, rate: float) -> bool:
    """Whether ``request_id`` hashes into the kept fraction ``rate`` (stable across restarts)."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    return h < rate * 2**64


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

    agree = (m.top1_agree > 0.5).astype(object)
    agree[np.isnan(m.top1_agree)] = None
    bodies = store_bodies
    rate = sample_rate
    return {
        "experiment_id": [experiment_id] * len(batch),
        "request_id": [p.request_id for p in batch],
        "ts": [p.ts for p in batch],
        "route": [p.route for p in batch],
        "request_sha256": [p.request.sha256 for p in batch],
        "prod_outcome": [p.prod.outcome.value for p in batch],
        "cand_outcome": [p.candidate.outcome.value for p in batch],
        "twin_outcome": [p.twin.outcome.value if p.twin else None for p in batch],
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
        "sampled": [sampled(p.request_id, rate) for p in batch],
        "request_body": [p.request.body if bodies else None for p in batch],
        "prod_body": [p.prod.body if bodies else None for p in batch],
        "cand_body": [p.candidate.body if bodies else None for p in batch],
    }
