"""The pairs table partitioned by day on PostgreSQL (migration 0004): days created ahead and on
demand, retention that drops whole days.

::

    pairs                    PARTITION BY RANGE (ts); primary key (experiment_id, request_id, ts)
    ├── pairs_p20261203      [2026-12-03 00:00 UTC, 2026-12-04 00:00 UTC)
    ├── pairs_p20261204      …one per UTC day, from today to DAYS_AHEAD days ahead
    └── pairs_default        every other time: older days, and the kept sample of dropped days

Days are created at start (:meth:`Partitions.create_ahead`, from ``Store.open``), by each retention
pass, and on demand: a batch holding a pair of a day between yesterday and ``DAYS_AHEAD`` days ahead
that has no partition creates it before the batch is written. A pair of any other day is stored in
``pairs_default``, so no pair ever fails for lack of a partition. A day created while
``pairs_default`` holds some of its pairs takes them over in the same transaction.

The primary key must hold the partition key, so it is (experiment_id, request_id, ts): a retried
batch stores nothing twice because a pair id always comes with the same ``ts`` (the proxy builds
a pair once and resends its bytes), hence the same partition and the same key.

Retention (:meth:`Partitions.drop_older`) takes a day whose whole range is older than the cutoff
(so on PostgreSQL a raw pair lives up to one day past ``retention_days``) off the table in one short
transaction (``DETACH PARTITION``), then, in a second one, moves its kept hash sample (``sampled``)
into ``pairs_default`` and drops it: no row-by-row DELETE, no dead rows to vacuum. A day detached
by a pass that died before the second step is finished by the next pass. Rows in ``pairs_default``
are purged by DELETE, as on SQLite.

Every change of the layout takes one transaction-level advisory lock first, so replicas (and a
retention pass racing a creation on demand) change it one at a time and never deadlock on the
tables' locks; each waits at most ``LOCK_TIMEOUT`` for the tables and otherwise gives up until the
next pass (a batch whose day could not be created goes to ``pairs_default``, and so do those of
the next RETRY_S seconds, rather than each waiting for the lock).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time, timedelta
from time import monotonic

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = [
    "DAYS_AHEAD",
    "DEFAULT",
    "Partitions",
    "day_bounds",
    "day_name",
    "epoch_days",
]

log = logging.getLogger(__name__)

PARENT = "pairs"
DEFAULT = "pairs_default"
#: Days created ahead of today (today is always created).
DAYS_AHEAD = 2
#: Advisory lock key of the partition layout ("SHADOWPT"; the leader's key is "SHADOWTE").
LOCK_KEY = 0x5348_4144_4F57_5054
LOCK_TIMEOUT = "5s"
#: After a failed creation on demand, batches go to pairs_default this long before one tries again.
RETRY_S = 60
_NAME = re.compile(r"^pairs_p(\d{8})$")
_EPOCH = date(1970, 1, 1)


def day_name(day: date) -> str:
    return f"{PARENT}_p{day:%Y%m%d}"


def _day_of(name: str) -> date | None:
    m = _NAME.match(name)
    return datetime.strptime(m.group(1), "%Y%m%d").date() if m else None


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day."""
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


def epoch_days(days: Iterable[int]) -> set[date]:
    """Dates from days since 1970-01-01 (``floor(posix_seconds / 86400)``)."""
    return {_EPOCH + timedelta(days=int(d)) for d in days}


def _literal(ts: datetime) -> str:
    return f"'{ts.isoformat()}'"


class Partitions:
    """The day partitions of one PostgreSQL database, as this process last read them.

    ``clock`` gives the time that says which days are "today" and "ahead" (UTC).
    """

    def __init__(
        self, engine: AsyncEngine, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.engine = engine
        self.clock = clock
        self._partitioned: bool | None = None  # None until read: a database before 0004 is not
        self._days: set[date] = set()  # attached day partitions, as last read
        self._elsewhere: set[date] = set()  # days seen in batches that go to pairs_default
        self._retry_at = 0.0  # after a failed creation on demand, batches wait for no lock

    # -- reading the layout -------------------------------------------------------------------
    async def partitioned(self) -> bool:
        """Whether ``pairs`` is a partitioned table (migration 0004 applied)."""
        if self._partitioned is None:
            async with self.engine.connect() as conn:
                kind = (
                    await conn.execute(
                        text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(:t)"),
                        {"t": PARENT},
                    )
                ).scalar()
            self._partitioned = kind == "p"
        return self._partitioned

    async def days(self) -> list[date]:
        """The days that have a partition, oldest first (read from the catalog)."""
        async with self.engine.connect() as conn:
            self._days = await self._attached(conn)
        return sorted(self._days)

    @staticmethod
    async def _attached(conn: AsyncConnection) -> set[date]:
        rows = await conn.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = to_regclass(:t)"
            ),
            {"t": PARENT},
        )
        return {d for (name,) in rows if (d := _day_of(name)) is not None}

    @staticmethod
    async def _detached(conn: AsyncConnection) -> set[date]:
        """Days detached by a retention pass that did not get to drop them."""
        rows = await conn.execute(
            text(
                "SELECT c.relname FROM pg_class c JOIN pg_class p ON p.oid = to_regclass(:t) "
                "WHERE c.relkind = 'r' AND NOT c.relispartition "
                "AND c.relnamespace = p.relnamespace AND c.relname ~ '^pairs_p[0-9]{8}$'"
            ),
            {"t": PARENT},
        )
        return {d for (name,) in rows if (d := _day_of(name)) is not None}

    # -- creating days ------------------------------------------------------------------------
    def _window(self) -> tuple[date, date]:
        """The days created on demand: yesterday to DAYS_AHEAD days after today."""
        today = self.clock().astimezone(UTC).date()
        return today - timedelta(days=1), today + timedelta(days=DAYS_AHEAD)

    async def ensure(self, days: Iterable[date]) -> None:
        """Create the partitions of ``days`` inside the on-demand window that have none (a batch's
        days, before it is written). A failure is logged, not raised: the pairs of a day without
        a partition go to ``pairs_default``."""
        wanted = {d for d in days if d not in self._days and d not in self._elsewhere}
        if not wanted or not await self.partitioned():
            return
        first, last = self._window()
        self._elsewhere |= {d for d in wanted if not first <= d <= last}
        wanted = {d for d in wanted if first <= d <= last}
        if wanted and monotonic() >= self._retry_at:
            try:
                await self.create(wanted)
            except SQLAlchemyError as exc:
                self._retry_at = monotonic() + RETRY_S
                log.warning(
                    "pairs: no partition for %s yet, retried in %d s (%s)",
                    ", ".join(map(str, sorted(wanted))),
                    RETRY_S,
                    exc,
                )

    async def create_ahead(self) -> list[date]:
        """Create today's partition and those of the DAYS_AHEAD days after; the days created."""
        if not await self.partitioned():
            return []
        today = self.clock().astimezone(UTC).date()
        return await self.create(today + timedelta(days=k) for k in range(DAYS_AHEAD + 1))

    async def create(self, days: Iterable[date]) -> list[date]:
        """Create the partitions of ``days`` that do not exist (one transaction); those created."""
        days = sorted(set(days))
        created: list[date] = []
        async with self.engine.begin() as conn:
            await self._lock(conn)
            self._days = await self._attached(conn)
            leftovers = await self._detached(conn)
            for day in days:
                if day in self._days:
                    continue
                if day in leftovers:
                    await self._finish(conn, day)
                await self._create_one(conn, day)
                created.append(day)
        self._days |= set(created)
        self._elsewhere -= set(created)
        if created:
            log.info("pairs: created partitions %s", ", ".join(map(str, created)))
        return created

    @staticmethod
    async def _lock(conn: AsyncConnection) -> None:
        await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))  # advisory too
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})

    @staticmethod
    async def _create_one(conn: AsyncConnection, day: date) -> None:
        """A new day: a table like ``pairs`` given the day's rows held by ``pairs_default``, then
        attached (which builds its indexes). ``pairs_default`` is locked first, so no pair of the
        day can land there in between; ATTACH takes only SHARE UPDATE EXCLUSIVE on ``pairs``, so
        batches going to other days go on."""
        name, (start, end) = day_name(day), day_bounds(day)
        await conn.execute(text(f"LOCK TABLE {DEFAULT} IN SHARE ROW EXCLUSIVE MODE"))
        await conn.execute(text(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS)"))
        await conn.execute(
            text(
                f"WITH moved AS (DELETE FROM {DEFAULT} WHERE ts >= :a AND ts < :b RETURNING *) "
                f"INSERT INTO {name} SELECT * FROM moved"
            ),
            {"a": start, "b": end},
        )
        await conn.execute(
            text(
                f"ALTER TABLE {PARENT} ATTACH PARTITION {name} "
                f"FOR VALUES FROM ({_literal(start)}) TO ({_literal(end)})"
            )
        )

    # -- retention ----------------------------------------------------------------------------
    async def drop_older(self, older_than: datetime) -> int:
        """Drop every day partition whose whole day is before ``older_than``, keeping its sampled
        pairs (moved to ``pairs_default``); the number of pairs dropped."""
        if not await self.partitioned():
            return 0
        async with self.engine.connect() as conn:
            attached = await self._attached(conn)
            leftovers = await self._detached(conn)
        old = sorted(d for d in attached if day_bounds(d)[1] <= older_than)
        dropped = 0
        for day in sorted(leftovers):
            dropped += await self._finish_alone(day)
        for day in old:
            async with self.engine.begin() as conn:
                await self._lock(conn)
                await conn.execute(text(f"ALTER TABLE {PARENT} DETACH PARTITION {day_name(day)}"))
            self._days.discard(day)
            dropped += await self._finish_alone(day)
        return dropped

    async def _finish_alone(self, day: date) -> int:
        async with self.engine.begin() as conn:
            await self._lock(conn)
            if day in await self._detached(conn):
                return await self._finish(conn, day)
        return 0

    @staticmethod
    async def _finish(conn: AsyncConnection, day: date) -> int:
        """Move a detached day's sampled pairs into ``pairs`` and drop it; the pairs dropped."""
        name = day_name(day)
        total = (await conn.execute(text(f"SELECT count(*) FROM {name}"))).scalar_one()
        kept = (
            await conn.execute(
                text(
                    f"WITH kept AS (INSERT INTO {PARENT} SELECT * FROM {name} WHERE sampled "
                    "ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM kept"
                )
            )
        ).scalar_one()
        await conn.execute(text(f"DROP TABLE {name}"))
        log.info("pairs: dropped the partition of %s (%d pairs, %d sampled kept)", day, total, kept)
        return int(total) - int(kept)
