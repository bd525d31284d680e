"""The store on SQLite and PostgreSQL: round trip, idempotency, concurrency, reads, verdicts."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from comparator.aggregates import Aggregate, keys
from comparator.exceptions import StoreError, UnknownExperiment
from comparator.store import MemorySample, Store, async_url
from comparator.store_ingest import Ingest
from comparator.wire import Pair
from tests.comparator.store_support import (  # noqa: F401 - fixtures
    T0,
    db_url_fixture,
    exp_fixture,
    make_pair,
    store_fixture,
)


def pairs_of(dicts: list[dict[str, Any]]) -> list[Pair]:
    return [Pair.model_validate(d) for d in dicts]


def totals(hours: list[tuple[Any, Aggregate]]) -> Aggregate:
    return Aggregate.merged(a for _, a in hours)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
        ("postgresql://u:p@h:5432/d", "postgresql+asyncpg://u:p@h:5432/d"),
        ("postgres://u@h/d", "postgresql+asyncpg://u@h/d"),
    ],
)
def test_async_url_maps_plain_urls_to_async_drivers(url: str, expected: str) -> None:
    assert async_url(url) == expected


def test_async_url_refuses_other_databases_naming_the_option() -> None:
    with pytest.raises(StoreError, match="--db: unsupported database 'mysql'"):
        async_url("mysql://h/d")


async def test_round_trip_stores_pairs_metrics_and_experiment(store: Store, exp: str) -> None:
    result = await store.ingest(pairs_of([make_pair(i, exp) for i in range(10)]))
    assert (result.received, result.inserted, result.duplicates) == (10, 10, 0)
    info = await store.get_experiment(exp)
    assert info is not None
    assert (info.n_pairs, info.prod_version, info.cand_version) == (10, "1", "2")
    assert info.task == "classification"
    assert info.started_at == T0
    assert info.last_pair_at == T0 + timedelta(seconds=9)
    assert exp in [e.name for e in await store.list_experiments()]
    assert await store.count_pairs(exp) == 10
    stored = await store.sample_pairs(exp, limit=3, most_divergent=False)
    assert [p.request_id for p in stored] == ["req-000009", "req-000008", "req-000007"]
    p = stored[0]
    assert (p.prod_class, p.cand_class, p.top1_agree, p.invalid) == (0, 0, True, False)
    # scipy.spatial.distance.jensenshannon([.7,.2,.1], [.6,.3,.1], base=2)
    assert p.js == pytest.approx(0.1001973429, rel=1e-6)
    assert p.ts.tzinfo is not None and p.ts == T0 + timedelta(seconds=9)
    assert p.request_body == {"x": 9}
    assert p.cand_body["outputs"][0]["data"] == [0.6, 0.3, 0.1]


async def test_bodies_are_not_stored_unless_configured(db_url: str, exp: str) -> None:
    store = await Store.open(db_url)
    try:
        await store.ingest(pairs_of([make_pair(1, exp)]))
        (p,) = await store.sample_pairs(exp)
        assert (p.request_body, p.prod_body, p.cand_body) == (None, None, None)
        assert p.js is not None  # the metrics are still there
    finally:
        await store.close()


async def test_same_batch_twice_is_stored_and_counted_once(store: Store, exp: str) -> None:
    batch = pairs_of([make_pair(i, exp, ts=T0 + timedelta(minutes=i)) for i in range(150)])
    await store.ingest(batch)
    before = [(h, a.to_json()) for h, a in await store.hourly_aggregates(exp)]
    again = await store.ingest(batch)
    assert (again.inserted, again.duplicates) == (0, 150)
    assert [(h, a.to_json()) for h, a in await store.hourly_aggregates(exp)] == before
    assert await store.count_pairs(exp) == 150
    info = await store.get_experiment(exp)
    assert info is not None and info.n_pairs == 150
    assert totals(await store.hourly_aggregates(exp)).count(keys.PAIRS) == 150


async def test_overlapping_batch_folds_only_the_new_pairs(store: Store, exp: str) -> None:
    other = exp + "-once"
    dicts = [make_pair(i, exp, cand_outcome="timeout" if i % 7 == 0 else "ok") for i in range(60)]
    await store.ingest(pairs_of(dicts[:40]))
    result = await store.ingest(pairs_of(dicts[20:]))
    assert (result.inserted, result.duplicates) == (20, 20)
    await store.ingest(pairs_of([{**d, "experiment": other} for d in dicts]))
    got, want = (
        totals(await store.hourly_aggregates(exp)),
        totals(await store.hourly_aggregates(other)),
    )
    assert got.counters == want.counters
    assert got.hists == want.hists
    assert got.cats == want.cats


async def test_a_stored_pair_the_lookup_missed_fails_the_whole_batch(
    store: Store, exp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.ingest(pairs_of([make_pair(i, exp) for i in range(5)]))
    before = [(h, a.to_json()) for h, a in await store.hourly_aggregates(exp)]

    async def nothing_stored(*_: Any) -> set[str]:
        return set()

    monkeypatch.setattr(Ingest, "_stored_ids", nothing_stored)
    # The driver's own error, raised as the store failure the ingest handler answers with 503.
    with pytest.raises(StoreError, match="bulk load of 5 pairs refused"):
        await store.ingest(pairs_of([make_pair(i, exp) for i in range(3, 8)]))
    assert await store.count_pairs(exp) == 5
    assert [(h, a.to_json()) for h, a in await store.hourly_aggregates(exp)] == before
    info = await store.get_experiment(exp)
    assert info is not None and info.n_pairs == 5


async def test_a_request_id_repeated_within_a_batch_counts_once(store: Store, exp: str) -> None:
    d = make_pair(1, exp)
    result = await store.ingest(pairs_of([d, d, make_pair(2, exp)]))
    assert result.inserted == 2
    assert totals(await store.hourly_aggregates(exp)).count(keys.PAIRS) == 2


async def test_concurrent_overlapping_ingests_count_every_pair_exactly_once(
    store: Store, exp: str
) -> None:
    dicts = [make_pair(i, exp, ts=T0 + timedelta(seconds=17 * i)) for i in range(400)]
    # Eight writers, each with a window of 100 pairs overlapping its neighbours by half.
    batches = [pairs_of(dicts[k * 50 : k * 50 + 100]) for k in range(7)] + [pairs_of(dicts[::3])]
    results = await asyncio.gather(*(store.ingest(b) for b in batches))
    assert sum(r.inserted for r in results) == 400
    assert await store.count_pairs(exp) == 400
    agg = totals(await store.hourly_aggregates(exp))
    assert agg.count(keys.PAIRS) == 400
    assert agg.count(keys.outcome("cand", "ok")) == 400
    info = await store.get_experiment(exp)
    assert info is not None and info.n_pairs == 400


async def test_hourly_aggregates_are_utc_hours_in_a_half_open_range(store: Store, exp: str) -> None:
    dicts = [make_pair(i, exp, ts=T0 + timedelta(minutes=20 * i)) for i in range(9)]  # 3 hours
    await store.ingest(pairs_of(dicts))
    hours = await store.hourly_aggregates(exp)
    assert [h for h, _ in hours] == [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)]
    assert [a.count(keys.PAIRS) for _, a in hours] == [3, 3, 3]
    middle = await store.hourly_aggregates(exp, T0 + timedelta(hours=1), T0 + timedelta(hours=2))
    assert [h for h, _ in middle] == [T0 + timedelta(hours=1)]
    assert await store.hourly_aggregates("no-such-experiment") == []


async def test_memory_samples_round_trip_in_time_order(store: Store, exp: str) -> None:
    samples = [
        MemorySample(T0 + timedelta(minutes=m), side, kind, 1e9 + m, 4e9 if kind == "rss" else None)
        for m in (2, 0, 1)
        for side in ("prod", "cand")
        for kind in ("rss", "gpu")
    ]
    await store.add_memory_samples(exp, samples)
    got = await store.memory_samples(exp)
    assert len(got) == 12
    assert [s.ts for s in got] == sorted(s.ts for s in samples)
    assert {s for s in got} == set(samples)
    window = await store.memory_samples(exp, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2))
    assert {s.ts for s in window} == {T0 + timedelta(minutes=1)}


async def test_save_verdict_keeps_history_state_and_reports_changes(store: Store, exp: str) -> None:
    await store.ingest(pairs_of([make_pair(1, exp)]))
    assert await store.load_verdict_state(exp) is None
    assert await store.latest_verdict(exp) is None
    assert await store.save_verdict(exp, T0, "KEEP_OBSERVING", {"n": 1}, {"cs": [1]}) is True
    assert (
        await store.save_verdict(
            exp, T0 + timedelta(hours=1), "KEEP_OBSERVING", {"n": 2}, {"cs": [2]}
        )
        is False
    )
    assert (
        await store.save_verdict(exp, T0 + timedelta(hours=2), "PROMOTE", {"n": 3}, {"cs": [3]})
        is True
    )
    assert await store.latest_verdict(exp) == {"n": 3}
    assert await store.load_verdict_state(exp) == {"cs": [3]}


async def test_save_verdict_of_an_unknown_experiment_raises(store: Store) -> None:
    with pytest.raises(UnknownExperiment):
        await store.save_verdict("never-seen", T0, "PROMOTE", {}, {})


async def test_purge_deletes_old_raw_pairs_but_keeps_aggregates(db_url: str, exp: str) -> None:
    store = await Store.open(db_url, raw_sample_rate=0.25)
    try:
        old = [make_pair(i, exp, ts=T0 + timedelta(seconds=i)) for i in range(200)]
        new = [make_pair(1000 + i, exp, ts=T0 + timedelta(days=9)) for i in range(5)]
        await store.ingest(pairs_of(old + new))
        before = totals(await store.hourly_aggregates(exp)).counters
        deleted = await store.purge_pairs(T0 + timedelta(days=1), experiment=exp, batch_size=30)
        kept = await store.count_pairs(exp)
        assert deleted + kept == 205
        assert 5 + 20 <= kept <= 5 + 90  # the 25 % hash sample of the old ones, and the new ones
        assert totals(await store.hourly_aggregates(exp)).counters == before
        assert await store.purge_pairs(T0 + timedelta(days=1), experiment=exp) == 0
    finally:
        await store.close()


async def test_open_reports_an_unreachable_database_as_store_error() -> None:
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:1"):
        await Store.open("postgresql://postgres@127.0.0.1:1/nothing")
