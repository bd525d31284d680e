"""Retention: raw pairs past ``retention_days`` go (a hashed sample is kept), whole days at a
time on PostgreSQL (the partitions), and the quarantine's old rows leave their counts behind."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import column, delete, select, table
from sqlalchemy.ext.asyncio import AsyncConnection

from comparator.store.dialect import EXP, PAIRS, QUARANTINE, TALLY
from comparator.store.partitions import DEFAULT, Partitions
from comparator.store.reads import Reads

__all__ = ["Retention"]

log = logging.getLogger(__name__)
# The default partition on PostgreSQL (comparator.store.partitions): what retention still deletes by row.
_PAIRS_DEFAULT = table(
    DEFAULT, column("experiment_id"), column("request_id"), column("ts"), column("sampled")
)


class Retention(Reads):
    """Purges on the store this is part of."""

    # Provided by the store this is part of (comparator.store.store.Store).
    partitions: Partitions | None
    _write: Callable[[], AbstractAsyncContextManager[AsyncConnection]]
    _insert: Callable[[Any], Any]

    async def purge_pairs(
        self,
        older_than: datetime,
        *,
        experiment: str | None = None,
        batch_size: int = 10_000,
        max_batches: int = 1_000,
    ) -> int:
        """Delete raw pairs older than ``older_than`` that are not in the kept hash sample.

        Only ``experiment`` when given, else every experiment. Works in bounded batches (one short
        transaction each) so ingest is never blocked for long; aggregates are untouched. Returns
        the number of rows deleted.

        On a partitioned PostgreSQL database and every experiment, whole days go instead
        (:meth:`comparator.store.partitions.Partitions.drop_older`: the days entirely before
        ``older_than``), the days ahead are created, and only ``pairs_default`` is purged by row.
        """
        rows: Any = PAIRS
        deleted = 0
        if experiment is None and self.partitions and await self.partitions.partitioned():
            deleted = await self.partitions.drop_older(older_than)
            await self.partitions.create_ahead()
            rows = _PAIRS_DEFAULT
        q = select(EXP.c.id).order_by(EXP.c.id)
        if experiment is not None:
            q = q.where(EXP.c.name == experiment)
        async with self.engine.connect() as conn:
            ids = list((await conn.execute(q)).scalars())
        for eid in ids:
            for _ in range(max_batches):
                victims = (
                    select(rows.c.request_id)
                    .where(
                        rows.c.experiment_id == eid,
                        rows.c.ts < older_than,
                        rows.c.sampled.is_(False),
                    )
                    .limit(batch_size)
                    .scalar_subquery()
                )
                async with self._write() as conn:
                    res = await conn.execute(
                        delete(rows).where(
                            rows.c.experiment_id == eid,
                            rows.c.ts < older_than,
                            rows.c.request_id.in_(victims),
                        )
                    )
                deleted += res.rowcount
                if res.rowcount < batch_size:
                    break
        return deleted

    async def purge_quarantine(
        self, older_than: datetime, *, batch_size: int = 10_000, max_batches: int = 1_000
    ) -> int:
        """Delete quarantine rows received before ``older_than``, oldest first in bounded
        batches, adding what each batch held to ``quarantine_tally`` (per experiment and reason)
        in the same transaction, so the counts of refused pairs stay whole. Returns the number
        of rows deleted."""
        deleted = 0
        for _ in range(max_batches):
            async with self._write() as conn:
                rows = (
                    await conn.execute(
                        select(QUARANTINE.c.id, QUARANTINE.c.experiment, QUARANTINE.c.reason)
                        .where(QUARANTINE.c.received_at < older_than)
                        .order_by(QUARANTINE.c.id)
                        .limit(batch_size)
                    )
                ).all()
                if not rows:
                    break
                tally = Counter((r.experiment or "", r.reason) for r in rows)
                await conn.execute(
                    delete(QUARANTINE).where(QUARANTINE.c.id.in_([r.id for r in rows]))
                )
                for (experiment, reason), n in sorted(tally.items()):
                    upsert = self._insert(TALLY).values(experiment=experiment, reason=reason, n=n)
                    await conn.execute(
                        upsert.on_conflict_do_update(
                            index_elements=["experiment", "reason"], set_={"n": TALLY.c.n + n}
                        )
                    )
            deleted += len(rows)
            if len(rows) < batch_size:
                break
        return deleted
