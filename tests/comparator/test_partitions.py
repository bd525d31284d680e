"""Pairs partitioned by day on PostgreSQL: days created ahead and on demand, retention that drops
whole days, exactly-once ingest across partitions, and migration 0004 from a database with rows.

Each test gets a database of its own: partitions are per database, not per experiment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import inspect, text

from comparator.judge.summary import summarize
from comparator.store.partitions import DAYS_AHEAD, day_name
from comparator.store.store import Store
from comparator.wire import Pair
from tests.comparator.store_support import T0, make_pair
from tests.support.pg import fresh_database

D1, D2 = T0.date(), T0.date() + timedelta(days=1)
MIDNIGHT = datetime.combine(D2, datetime.min.time(), tzinfo=UTC)  # D1 | D2


def _fresh(server: str) -> Iterator[str]:
    yield from fresh_database(server, "shadowtee_part")


@pytest.fixture(name="pg_db")
def pg_db_fixture(pg_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database."""
    yield from _fresh(pg_url.rsplit("/", 1)[0])


@pytest.fixture(name="any_db", params=["sqlite", "postgresql"])
def any_db_fixture(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/part.db"
        return
    yield from _fresh(str(request.getfixturevalue("pg_url")).rsplit("/", 1)[0])


def pairs(exp: str, ids: range, at: datetime, prefix: str = "r") -> list[Pair]:
    return [
        Pair.model_validate(
            make_pair(i, exp, ts=at + timedelta(seconds=i), request_id=f"{prefix}-{i:06d}")
        )
        for i in ids
    ]


async def scalar(store: Store, sql: str) -> Any:
    async with store.engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar()


async def rows_in(store: Store, table: str) -> int:
    return int(await scalar(store, f"SELECT count(*) FROM {table}"))


async def upgrade_to(db_url: str, revision: str, *, down: bool = False) -> None:
    from alembic import command

    from comparator.store.database import _alembic_config, make_engine

    def run(connection: Any) -> None:
        cfg = _alembic_config()
        cfg.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(cfg, revision)

    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run)
    finally:
        await engine.dispose()


async def test_open_creates_today_and_the_days_ahead(pg_db: str) -> None:
    store = await Store.open(pg_db)
    try:
        assert store.partitions is not None
        today = datetime.now(UTC).date()
        days = await store.partitions.days()
        assert [today + timedelta(days=k) for k in range(DAYS_AHEAD + 1)] == [
            d for d in days if d >= today
        ]
        assert (
            await scalar(store, "SELECT relkind::text FROM pg_class WHERE relname = 'pairs'") == "p"
        )
        assert await store.partitions.create_ahead() == []  # a second time: nothing to do
    finally:
        await store.close()
    again = await Store.open(pg_db)  # another replica starting: finds them, creates nothing
    try:
        assert again.partitions is not None
        assert await again.partitions.create_ahead() == []
    finally:
        await again.close()


async def test_yesterday_gets_a_partition_on_demand_and_an_old_day_goes_to_default(
    pg_db: str,
) -> None:
    store = await Store.open(pg_db)
    try:
        assert store.partitions is not None
        exp = "demand"
        yesterday = datetime.now(UTC) - timedelta(days=1)
        batch = pairs(exp, range(5), T0, "old") + pairs(exp, range(5), yesterday, "new")
        result = await store.ingest(batch)
        assert (result.inserted, result.duplicates) == (10, 0)
        assert yesterday.date() in await store.partitions.days()
        assert D1 not in await store.partitions.days()  # outside the on-demand window
        assert await rows_in(store, day_name(yesterday.date())) == 5
        assert await rows_in(store, "pairs_default") == 5
        assert await store.count_pairs(exp) == 10
        # A day created later takes over its pairs from the default partition.
        assert await store.partitions.create([D1]) == [D1]
        assert await rows_in(store, day_name(D1)) == 5
        assert await rows_in(store, "pairs_default") == 0
        assert await store.count_pairs(exp) == 10
    finally:
        await store.close()


async def test_a_day_that_cannot_be_created_now_is_stored_in_default_without_waiting_again(
    pg_db: str,
) -> None:
    """Another process holds the layout's lock: the first batch waits the lock timeout and goes
    to the default partition; the next ones go there at once; the day, created later, takes
    them over."""
    import asyncpg

    from comparator.store.partitions import LOCK_KEY

    store = await Store.open(pg_db)
    holder = await asyncpg.connect(pg_db)
    try:
        assert store.partitions is not None
        tr = holder.transaction()
        await tr.start()
        await holder.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        yesterday = datetime.now(UTC) - timedelta(days=1)
        t = time.monotonic()
        assert (await store.ingest(pairs("locked", range(10), yesterday))).inserted == 10
        first = time.monotonic() - t
        t = time.monotonic()
        assert (await store.ingest(pairs("locked", range(10, 20), yesterday))).inserted == 10
        second = time.monotonic() - t
        assert first >= 4.5 and second < 2.0, (first, second)
        assert await rows_in(store, "pairs_default") == 20
        await tr.rollback()
        assert await store.partitions.create([yesterday.date()]) == [yesterday.date()]
        assert await rows_in(store, day_name(yesterday.date())) == 20
        assert await rows_in(store, "pairs_default") == 0
        assert await store.count_pairs("locked") == 20
    finally:
        await holder.close()
        await store.close()


async def test_retried_batches_spanning_partitions_store_nothing_twice(pg_db: str) -> None:
    store = await Store.open(pg_db)
    try:
        assert store.partitions is not None
        await store.partitions.create([D2])  # D1 stays in the default partition
        exp = "retries"
        first = pairs(exp, range(0, 40), MIDNIGHT - timedelta(seconds=20))
        assert {p.ts.date() for p in first} == {D1, D2}
        assert (await store.ingest(first)).inserted == 40
        again = await store.ingest(first)
        assert (again.inserted, again.duplicates) == (0, 40)
        # Half retried, half new, over both partitions.
        more = pairs(exp, range(20, 60), MIDNIGHT - timedelta(seconds=20))
        assert (await store.ingest(more)).inserted == 20
        assert await store.count_pairs(exp) == 60
        assert await rows_in(store, "pairs_default") + await rows_in(store, day_name(D2)) == 60
        hours = await store.hourly_aggregates(exp)
        assert sum(a.counters["pairs"] for _, a in hours) == 60
        info = await store.get_experiment(exp)
        assert info is not None and info.n_pairs == 60
    finally:
        await store.close()


async def test_two_replicas_creating_the_same_day_store_each_pair_once(pg_db: str) -> None:
    stores = [await Store.open(pg_db) for _ in range(2)]
    try:
        exp = "race"
        yesterday = datetime.now(UTC) - timedelta(days=1)
        batch = pairs(exp, range(100), yesterday)
        results = await asyncio.gather(*(s.ingest(batch) for s in stores))
        assert sorted(r.inserted for r in results) == [0, 100]
        assert await stores[0].count_pairs(exp) == 100
        assert await rows_in(stores[0], day_name(yesterday.date())) == 100
    finally:
        for s in stores:
            await s.close()


async def test_retention_drops_whole_old_days_and_keeps_the_sample_and_aggregates(
    pg_db: str,
) -> None:
    store = await Store.open(pg_db, raw_sample_rate=0.3)
    try:
        assert store.partitions is not None
        await store.partitions.create([D1, D2])
        exp = "retention"
        await store.ingest(
            pairs(exp, range(0, 200), T0) + pairs(exp, range(200, 300), T0 + timedelta(days=1))
        )
        await store.save_verdict(exp, T0 + timedelta(days=1), "continue", {"x": 1}, {"at": None})
        hours_before = [(h, a.to_json()) for h, a in await store.hourly_aggregates(exp)]
        sampled_d1 = int(await scalar(store, f"SELECT count(*) FROM {day_name(D1)} WHERE sampled"))
        assert 0 < sampled_d1 < 200
        purged = await store.purge_pairs(MIDNIGHT + timedelta(hours=12))
        assert purged == 200 - sampled_d1
        days = await store.partitions.days()
        assert D1 not in days and D2 in days  # D2 is not wholly before the cutoff
        assert await scalar(store, f"SELECT to_regclass('{day_name(D1)}')") is None
        assert await rows_in(store, "pairs_default") == sampled_d1  # the kept sample
        assert await rows_in(store, day_name(D2)) == 100
        assert await store.count_pairs(exp) == 100 + sampled_d1
        assert [(h, a.to_json()) for h, a in await store.hourly_aggregates(exp)] == hours_before
        assert await store.latest_verdict(exp) == {"x": 1}
        # The kept sample of a dropped day in the default partition is kept by later passes too.
        sampled_d2 = int(await scalar(store, f"SELECT count(*) FROM {day_name(D2)} WHERE sampled"))
        assert await store.purge_pairs(datetime.now(UTC)) == 100 - sampled_d2
        assert await store.count_pairs(exp) == sampled_d1 + sampled_d2
    finally:
        await store.close()


async def test_a_day_left_detached_by_a_dead_pass_is_dropped_by_the_next(pg_db: str) -> None:
    store = await Store.open(pg_db)
    try:
        assert store.partitions is not None
        await store.partitions.create([D1])
        await store.ingest(pairs("dead", range(50), T0))
        async with store.engine.begin() as conn:
            await conn.execute(text(f"ALTER TABLE pairs DETACH PARTITION {day_name(D1)}"))
        assert await store.purge_pairs(T0) == 50  # nothing older than T0 but the leftover
        assert await scalar(store, f"SELECT to_regclass('{day_name(D1)}')") is None
    finally:
        await store.close()


async def test_0004_partitions_a_0003_database_holding_pairs_and_downgrades(
    any_db: str,
) -> None:
    await upgrade_to(any_db, "0003")
    exp = "migrated"
    store = await Store.open(any_db, upgrade=False)
    try:
        assert (await store.migration_state())[0] == "0003"
        yesterday = datetime.now(UTC) - timedelta(days=1)
        await store.ingest(pairs(exp, range(30), T0) + pairs(exp, range(30, 40), yesterday))
        before = [(h, a.to_json()) for h, a in await store.hourly_aggregates(exp)]
    finally:
        await store.close()
    store = await Store.open(any_db)  # to head
    try:
        assert await store.migration_state() == ("0006", "0006")
        assert await store.count_pairs(exp) == 40
        assert [(h, a.to_json()) for h, a in await store.hourly_aggregates(exp)] == before
        if store.partitions is not None:
            days = await store.partitions.days()
            assert {D1, yesterday.date(), datetime.now(UTC).date()} <= set(days)
            assert await rows_in(store, day_name(D1)) == 30
            assert await rows_in(store, "pairs_default") == 0
        else:  # SQLite: unchanged, keyed by (experiment_id, request_id)
            async with store.engine.connect() as conn:
                pk = await conn.run_sync(lambda c: inspect(c).get_pk_constraint("pairs"))
            assert pk["constrained_columns"] == ["experiment_id", "request_id"]
        result = await store.ingest(pairs(exp, range(35, 45), yesterday))
        assert (result.inserted, result.duplicates) == (5, 5)
        summary = await summarize(store, exp)
        assert summary["pairs"] == 45
    finally:
        await store.close()
    await upgrade_to(any_db, "0003", down=True)
    store = await Store.open(any_db, upgrade=False)
    try:
        assert (await store.migration_state())[0] == "0003"
        assert await store.count_pairs(exp) == 45
        async with store.engine.connect() as conn:
            pk = await conn.run_sync(lambda c: inspect(c).get_pk_constraint("pairs"))
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        assert pk["constrained_columns"] == ["experiment_id", "request_id"]
        assert not [t for t in tables if t.startswith("pairs_")]
        result = await store.ingest(pairs(exp, range(40, 50), yesterday))
        assert (result.inserted, result.duplicates) == (5, 5)
    finally:
        await store.close()


def test_day_names_and_bounds_are_utc_days() -> None:
    from comparator.store.partitions import day_bounds, epoch_days

    assert day_name(date(2026, 12, 3)) == "pairs_p20261203"
    start, end = day_bounds(date(2026, 12, 3))
    assert (start.isoformat(), end.isoformat()) == (
        "2026-12-03T00:00:00+00:00",
        "2026-12-04T00:00:00+00:00",
    )
    assert epoch_days([0, 20_425]) == {date(1970, 1, 1), date(2025, 12, 3)}
