"""Pairs judged one by one: refused pairs go to the quarantine with their reason, the rest are
stored; over real HTTP on SQLite and on the real PostgreSQL server (which refuses NUL in text
and ``\\u0000`` in JSONB)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import select

from comparator.app import create_app
from comparator.ingest import screen_body
from comparator.routes import STORE
from comparator.settings import ComparatorSettings
from comparator.store.dialect import QUARANTINE
from comparator.store.prepare import MAX_BACKDATE
from comparator.store.store import Store
from tests.comparator.store_support import (  # noqa: F401 - fixtures
    T0,
    db_url_fixture,
    exp_fixture,
    make_pair,
    running,
)

TOKEN = "quarantine-token"


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[tuple[aiohttp.ClientSession, Store]]:
    settings = ComparatorSettings(
        db=db_url, token=SecretStr(TOKEN), max_body_bytes=512 * 1024, store_request_bodies=True
    )
    app = create_app(settings, CollectorRegistry())
    async with (
        running(app) as base,
        aiohttp.ClientSession(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as http,
    ):
        yield http, app[STORE]


async def post_raw(http: aiohttp.ClientSession, body: bytes) -> tuple[int, Any]:
    async with http.post("/v1/pairs", data=body, headers={"Content-Type": "application/json"}) as r:
        return r.status, await r.json()


async def quarantined(store: Store, exp: str) -> list[tuple[str | None, str]]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(QUARANTINE.c.request_id, QUARANTINE.c.reason)
            .where(QUARANTINE.c.experiment == exp)
            .order_by(QUARANTINE.c.request_id)
        )
        return [(r[0], r[1]) for r in rows]


def poisoned(exp: str) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Ten pairs, five of them each poisoned one way; their index -> expected reason."""
    batch = [make_pair(i, exp) for i in range(10)]
    batch[1]["route"] = "/v2/models/a\x00b/infer"  # a NUL route
    batch[3]["candidate"]["model_version"] = "2\x00"  # a NUL model version
    batch[5]["prod"]["status"] = 999  # a status outside 100-599
    batch[7]["prod"]["body"] = {"outputs": [{"name": "x\x00", "data": [1]}]}  # NUL in JSONB
    batch[9]["candidate"]["latency_ms"] = "slow"
    return batch, {
        1: "unstorable_text",
        3: "unstorable_text",
        5: "invalid",
        7: "unstorable_text",
        9: "invalid",
    }


async def test_poisoned_pairs_are_quarantined_and_the_others_stored(api: Any, exp: str) -> None:
    http, store = api
    batch, expected = poisoned(exp)
    status, body = await post_raw(http, json.dumps({"pairs": batch}).encode())
    assert status == 200, body
    assert (body["received"], body["inserted"], body["quarantined"]) == (10, 5, 5)
    assert {r["index"]: r["reason"] for r in body["refused"]} == expected
    assert "pairs[5].prod.status" in body["refused"][2]["detail"]
    assert await store.count_pairs(exp) == 5
    assert await quarantined(store, exp) == sorted(
        (f"req-{i:06d}", reason) for i, reason in expected.items()
    )
    # The summary counts them, and so does /metrics.
    async with http.get(f"/v1/experiments/{exp}/summary") as r:
        summary = await r.json()
    assert summary["quarantine"] == {
        "total": 5,
        "by_reason": {"invalid": 2, "unstorable_text": 3},
    }
    async with http.get("/metrics") as r:
        text = await r.text()
    assert 'shadowtee_comparator_pairs_quarantined_total{reason="unstorable_text"} 3.0' in text
    # A retried batch stores nothing twice; its refused pairs are refused (and kept) again.
    status, again = await post_raw(http, json.dumps({"pairs": batch}).encode())
    assert (status, again["inserted"], again["duplicates"], again["quarantined"]) == (200, 0, 5, 5)


async def test_a_lone_surrogate_and_a_nul_in_raw_json_are_quarantined(api: Any, exp: str) -> None:
    """As a proxy of an earlier version wrote a ``%ff`` path: ``"\\udcff"`` in the JSON text."""
    http, store = api
    good = json.dumps(make_pair(0, exp)).encode()
    surrogate = json.dumps(make_pair(1, exp)).replace(
        "/v2/models/m/infer", "/v2/models/\\udcff/infer"
    )
    nul_id = json.dumps(make_pair(2, exp, request_id="id\x00x"))
    body = b'{"pairs": [' + b",".join([good, surrogate.encode(), nul_id.encode()]) + b"]}"
    status, out = await post_raw(http, body)
    assert status == 200, out
    # pydantic refuses the lone surrogate itself; the NUL is found by the text check.
    assert [(r["index"], r["reason"]) for r in out["refused"]] == [
        (1, "invalid"),
        (2, "unstorable_text"),
    ]
    assert await store.count_pairs(exp) == 1
    rows = await quarantined(store, exp)
    assert ("id\ufffdx", "unstorable_text") in rows and ("req-000001", "invalid") in rows


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"pairs": [', 400),
        (b"[1, 2]", 400),
        (b'{"pairs": []}', 422),
        (b'{"pairs": "\\u0000"}', 400),
        (b'{"pears": [{}]}', 400),
    ],
)
async def test_a_body_that_is_not_a_batch_is_refused_whole(
    api: Any, body: bytes, status: int
) -> None:
    http, store = api

    async def kept() -> int:
        async with store.engine.connect() as conn:
            return len((await conn.execute(select(QUARANTINE.c.id))).all())

    before = await kept()
    got, out = await post_raw(http, body)
    assert got == status and out["error"]
    assert await kept() == before


async def test_pairs_far_before_the_first_pair_or_in_the_future_are_quarantined(
    api: Any, exp: str
) -> None:
    http, store = api
    now = datetime.now(UTC).replace(microsecond=0)
    first = [
        make_pair(i, exp, ts=now - timedelta(minutes=10) + timedelta(seconds=i)) for i in range(3)
    ]
    status, out = await post_raw(http, json.dumps({"pairs": first}).encode())
    assert (status, out["inserted"]) == (200, 3)
    start = (await store.get_experiment(exp)).started_at
    batch = [
        make_pair(10, exp, ts=start - MAX_BACKDATE - timedelta(seconds=1)),  # too old
        make_pair(11, exp, ts=start - MAX_BACKDATE + timedelta(minutes=1)),  # just inside
        make_pair(12, exp, ts=now + timedelta(days=30)),  # future
        make_pair(13, exp, ts=now),
    ]
    status, out = await post_raw(http, json.dumps({"pairs": batch}).encode())
    assert status == 200
    assert [(r["index"], r["reason"]) for r in out["refused"]] == [(0, "too_old"), (2, "future")]
    info = await store.get_experiment(exp)
    assert info.n_pairs == 5
    assert info.started_at == start - MAX_BACKDATE + timedelta(minutes=1)
    assert await quarantined(store, exp) == [("req-000010", "too_old"), ("req-000012", "future")]


async def test_a_batch_of_refused_pairs_only_stores_them_in_the_quarantine(
    api: Any, exp: str
) -> None:
    http, store = api
    batch = [make_pair(i, exp) for i in range(3)]
    for p in batch:
        p["route"] = "\x00"
    status, out = await post_raw(http, json.dumps({"pairs": batch}).encode())
    assert (status, out["inserted"], out["quarantined"]) == (200, 0, 3)
    assert await store.get_experiment(exp) is None
    assert len(await quarantined(store, exp)) == 3


def test_the_clean_fast_path_and_the_item_path_agree() -> None:
    batch = [make_pair(i, "e") for i in range(4)]
    clean = screen_body(json.dumps({"pairs": batch}).encode(), "application/json")
    assert (clean.indexes, clean.refused) == ([0, 1, 2, 3], [])
    batch[2]["error_extra"] = 1
    mixed = screen_body(json.dumps({"pairs": batch}).encode(), "application/json")
    assert mixed.indexes == [0, 1, 3]
    assert [p.request_id for p in mixed.pairs] == [
        p.request_id for p in clean.pairs if p.request_id != "req-000002"
    ]
    assert [(r.index, r.reason, r.request_id) for r in mixed.refused] == [
        (2, "invalid", "req-000002")
    ]
    assert T0.tzinfo is UTC


async def test_a_pair_the_proxy_repaired_is_stored_and_listed_once(api: Any, exp: str) -> None:
    http, store = api
    batch = [make_pair(i, exp) for i in range(3)]
    batch[1]["route"] = "/v2/models/a\ufffdb/infer"
    batch[1]["repaired"] = ["route"]
    for _ in range(2):  # a retried batch lists it once
        status, out = await post_raw(http, json.dumps({"pairs": batch}).encode())
        assert status == 200 and out["refused"] == []
    assert (out["inserted"], out["duplicates"]) == (0, 3)
    assert await store.count_pairs(exp) == 3
    assert await quarantined(store, exp) == [("req-000001", "repaired")]
    async with http.get(f"/v1/experiments/{exp}/summary") as r:
        assert (await r.json())["quarantine"]["by_reason"] == {"repaired": 1}


async def test_under_the_lock_a_pair_far_before_another_writers_start_is_quarantined(
    db_url: str, exp: str
) -> None:
    """Two stores on one database (two comparator processes): the second has never seen the
    experiment, so only the locked row tells it where the experiment starts."""
    from comparator.measure.aggregates import keys
    from comparator.wire import Pair

    first, second = await Store.open(db_url), await Store.open(db_url)
    try:
        start = T0 + timedelta(hours=10)
        early = [
            Pair.model_validate(make_pair(i, exp, ts=start + timedelta(seconds=i)))
            for i in range(5)
        ]
        await first.ingest(early)
        late = [
            Pair.model_validate(make_pair(10, exp, ts=start - MAX_BACKDATE - timedelta(hours=1))),
            Pair.model_validate(make_pair(11, exp, ts=start - timedelta(minutes=30))),
            Pair.model_validate(make_pair(12, exp, ts=start + timedelta(minutes=5))),
        ]
        result = await second.ingest(late)
        assert [(r.index, r.reason) for r in result.quarantined] == [(0, "too_old")]
        assert (result.inserted, result.duplicates) == (2, 0)
        info = await second.get_experiment(exp)
        assert info is not None and info.n_pairs == 7
        assert info.started_at == start - timedelta(minutes=30)
        hours = await second.hourly_aggregates(exp)
        assert sum(a.count(keys.PAIRS) for _, a in hours) == 7
        assert await quarantined(second, exp) == [("req-000010", "too_old")]
    finally:
        await first.close()
        await second.close()


async def test_retention_purges_quarantine_rows_and_keeps_their_counts(api: Any, exp: str) -> None:
    """Rows go in bounded batches, oldest first; the counts per reason survive in the tally, and
    a later purge adds to them (SQLite and PostgreSQL)."""
    from comparator.judge.summary import quarantine_counts

    http, store = api
    now = datetime.now(UTC).replace(microsecond=0)
    first = [make_pair(i, exp, ts=now - timedelta(seconds=30 - i)) for i in range(3)]
    assert (await post_raw(http, json.dumps({"pairs": first}).encode()))[0] == 200
    future = [make_pair(100 + i, exp, ts=now + timedelta(days=30)) for i in range(7)]
    assert (await post_raw(http, json.dumps({"pairs": future}).encode()))[0] == 200
    other = [{**make_pair(200, exp), "prod": "not a side"}]  # invalid
    assert (await post_raw(http, json.dumps({"pairs": other}).encode()))[0] == 200
    before = await quarantine_counts(store, exp)
    assert before == {"total": 8, "by_reason": {"future": 7, "invalid": 1}}

    assert await store.purge_quarantine(now - timedelta(hours=1)) == 0  # nothing that old
    # every experiment's old rows go (the PostgreSQL database is shared with other tests)
    assert await store.purge_quarantine(datetime.now(UTC) + timedelta(seconds=1), batch_size=3) >= 8
    assert await quarantined(store, exp) == []
    assert await quarantine_counts(store, exp) == before
    # more refusals, purged again: the tally adds up
    again = [make_pair(300 + i, exp, ts=now + timedelta(days=30)) for i in range(2)]
    assert (await post_raw(http, json.dumps({"pairs": again}).encode()))[0] == 200
    assert (await quarantine_counts(store, exp))["total"] == 10
    assert await store.purge_quarantine(datetime.now(UTC) + timedelta(seconds=1)) >= 2
    assert await quarantined(store, exp) == []
    assert await quarantine_counts(store, exp) == {
        "total": 10,
        "by_reason": {"future": 9, "invalid": 1},
    }
