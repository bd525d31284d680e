"""The store on SQLite and PostgreSQL: round trip, idempotency, concurrency, reads, verdicts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from comparator.exceptions import StoreError, UnknownExperiment
from comparator.measure.aggregates import Aggregate, keys
from comparator.store.database import async_url
from comparator.store.reads import MemorySample
from comparator.store.store import Store
from comparator.store.writer import Ingest
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


async def test_a_batch_of_new_pairs_is_one_bulk_load_with_no_lookup(
    store: Store, exp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.ingest(pairs_of([make_pair(i, exp) for i in range(5)]))

    async def refuse(*_: Any) -> Any:
        raise AssertionError("a batch of new pairs took the duplicates path")

    monkeypatch.setattr(Ingest, "_stored_ids", refuse)
    monkeypatch.setattr(Ingest, "_insert_missing", refuse)
    result = await store.ingest(pairs_of([make_pair(i, exp) for i in range(5, 12)]))
    assert (result.inserted, result.duplicates) == (7, 0)
    assert await store.count_pairs(exp) == 12
    # A stored one among them is found by the primary key, and only then is the slow path taken.
    with pytest.raises(AssertionError, match="duplicates path"):
        await store.ingest(pairs_of([make_pair(i, exp) for i in range(11, 14)]))
    assert await store.count_pairs(exp) == 12


async def test_a_stored_pair_the_sqlite_lookup_missed_fails_the_whole_batch(
    store: Store, exp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if store.dialect != "sqlite":
        pytest.skip("PostgreSQL stores the missing pairs with ON CONFLICT DO NOTHING: no lookup")
    await store.ingest(pairs_of([make_pair(i, exp) for i in range(5)]))
    before = [(h, a.to_json()) for h, a in await store.hourly_aggregates(exp)]

    async def nothing_stored(*_: Any) -> set[str]:
        return set()

    monkeypatch.setattr(Ingest, "_stored_ids", nothing_stored)
    # The driver's own error, raised as the store failure the ingest handler answers with 503.
    with pytest.raises(StoreError, match="insert of 5 pairs, some stored already refused"):
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


async def test_writers_with_stale_hints_fold_what_one_writer_folds(db_url: str, exp: str) -> None:
    """Two stores on one database (two comparator workers): each measures a batch before its lock
    from what it last saw of the experiment, which the other may have changed since."""

    def batch(name: str, start: datetime, n: int, first: int) -> list[Pair]:
        return pairs_of(
            [make_pair(first + i, name, ts=start + timedelta(minutes=i)) for i in range(n)]
        )

    at = datetime(2026, 11, 22, tzinfo=UTC)
    plan = [  # (writer, start, pairs, first id)
        ("a", at.replace(hour=12), 6, 0),
        ("b", at.replace(hour=12, minute=10), 5, 100),
        ("a", at.replace(hour=10), 5, 200),  # the experiment now starts two hours earlier
        ("b", at.replace(hour=10, minute=40), 5, 300),  # b still thinks it starts at 12:00
        ("b", at.replace(hour=10), 8, 200),  # a retry of a's batch with 3 new pairs
    ]
    a, b, alone = [await Store.open(db_url) for _ in range(3)]
    try:
        for who, start, n, first in plan:
            await {"a": a, "b": b}[who].ingest(batch(exp, start, n, first))
            await alone.ingest(batch(exp + "-alone", start, n, first))
        got = [(h, agg.to_json()) for h, agg in await a.hourly_aggregates(exp)]
        want = [(h, agg.to_json()) for h, agg in await alone.hourly_aggregates(exp + "-alone")]
        assert got == want
        # the warm-up is counted from the true start: 10:40 is past it, so its latencies count
        ten = dict(await alone.hourly_aggregates(exp + "-alone"))[at.replace(hour=10)]
        assert sum(ten.hists[keys.latency("prod")].values()) == 5
        info = await b.get_experiment(exp)
        assert info is not None and info.n_pairs == 24
        assert info.started_at == at.replace(hour=10)
    finally:
        for s in (a, b, alone):
            await s.close()


async def test_a_writer_that_missed_the_task_another_fixed_measures_with_that_task(
    db_url: str, exp: str
) -> None:
    def unreadable(i: int, name: str) -> dict[str, Any]:
        d = make_pair(i, name, cand_outcome="timeout")
        d["prod"]["body"] = None  # no output on either side: the task stays unknown
        return d

    plan: list[tuple[str, list[Any]]] = [
        ("b", [lambda n, i=i: unreadable(i, n) for i in range(5)]),
        ("a", [lambda n, i=i: make_pair(i, n) for i in range(5, 10)]),  # fixes classification
        # Off the simplex: a batch alone would be read as embeddings; this experiment is
        # classification now, so these are invalid classifier outputs.
        ("b", [lambda n, i=i: make_pair(i, n, prod_probs=[0.5, 0.9, 0.3],
                                        cand_probs=[0.4, 0.8, 0.2]) for i in range(10, 15)]),
    ]  # fmt: skip
    a, b, alone = [await Store.open(db_url) for _ in range(3)]
    try:
        for who, makers in plan:
            await {"a": a, "b": b}[who].ingest(pairs_of([m(exp) for m in makers]))
            await alone.ingest(pairs_of([m(exp + "-alone") for m in makers]))
        got = [(h, agg.to_json()) for h, agg in await a.hourly_aggregates(exp)]
        want = [(h, agg.to_json()) for h, agg in await alone.hourly_aggregates(exp + "-alone")]
        assert got == want
        assert (
            totals(await a.hourly_aggregates(exp)).count(keys.paired(keys.INVALID, True, True)) == 5
        )
        info = await b.get_experiment(exp)
        assert info is not None and info.task == "classification"
    finally:
        for s in (a, b, alone):
            await s.close()


async def test_a_batch_that_fails_after_its_bulk_load_leaves_nothing_behind(
    store: Store, exp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.ingest(pairs_of([make_pair(i, exp) for i in range(5)]))  # the experiment exists
    before = [(h, a.to_json()) for h, a in await store.hourly_aggregates(exp)]

    async def refused(*_: Any) -> None:
        raise StoreError("hourly aggregates update refused")

    monkeypatch.setattr(Ingest, "merge_hours", refused)
    with pytest.raises(StoreError, match="hourly aggregates"):
        await store.ingest(pairs_of([make_pair(i, exp) for i in range(5, 12)]))
    assert await store.count_pairs(exp) == 5  # the loaded pairs were rolled back with the batch
    assert [(h, a.to_json()) for h, a in await store.hourly_aggregates(exp)] == before
    info = await store.get_experiment(exp)
    assert info is not None and info.n_pairs == 5


@pytest.mark.parametrize("writes_first", [True, False])
async def test_with_writes_first_no_batch_is_measured_while_another_is_being_written(
    db_url: str, exp: str, monkeypatch: pytest.MonkeyPatch, writes_first: bool
) -> None:
    store = await Store.open(db_url, writes_first=writes_first)
    writing_when_measured: list[int] = []
    prepare = Ingest.prepare

    def spy(self: Ingest, pairs: Any, *args: Any) -> Any:
        writing_when_measured.append(store._writing)
        return prepare(self, pairs, *args)

    monkeypatch.setattr(Ingest, "prepare", spy)
    batches = [pairs_of([make_pair(20 * k + i, exp) for i in range(20)]) for k in range(6)]
    try:
        results = await asyncio.gather(*(store.ingest(b) for b in batches))
        assert sum(r.inserted for r in results) == 120
        assert await store.count_pairs(exp) == 120
    finally:
        await store.close()
    # writes_first: each batch waited for the writes in flight to commit before its CPU work
    # began. Without it a batch is measured while the ones before it are written.
    assert (writing_when_measured == [0] * 6) is writes_first
