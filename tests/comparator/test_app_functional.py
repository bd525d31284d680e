"""The comparator over real HTTP on 127.0.0.1, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from comparator.app import create_app
from comparator.measure.aggregates import ddsketch_key, ddsketch_value
from comparator.routes import IN_FLIGHT as _IN_FLIGHT
from comparator.routes import STORE
from comparator.settings import ComparatorSettings
from comparator.store.store import Store
from tests.comparator.store_support import (  # noqa: F401 - fixtures
    T0,
    db_url_fixture,
    exp_fixture,
    make_pair,
    running,
)

TOKEN = "t0ken-for-tests"


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[tuple[str, aiohttp.ClientSession, Store]]:
    settings = ComparatorSettings(db=db_url, token=TOKEN, max_body_bytes=256 * 1024)
    app = create_app(settings, CollectorRegistry())
    async with (
        running(app) as base,
        aiohttp.ClientSession(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as http,
    ):
        yield base, http, app[STORE]


async def post(
    http: aiohttp.ClientSession, pairs: list[dict[str, Any]], **kw: Any
) -> tuple[int, Any]:
    async with http.post("/v1/pairs", json={"pairs": pairs}, **kw) as r:
        return r.status, await r.json()


async def test_json_batch_is_stored_and_listed(api: Any, exp: str) -> None:
    _, http, _ = api
    status, body = await post(http, [make_pair(i, exp) for i in range(5)])
    assert (status, body["inserted"], body["duplicates"]) == (200, 5, 0)
    async with http.get("/v1/experiments") as r:
        exps = {e["name"]: e for e in (await r.json())["experiments"]}
    assert exps[exp]["n_pairs"] == 5
    assert exps[exp]["prod_version"] == "1"


async def test_ndjson_batch_is_stored(api: Any, exp: str) -> None:
    _, http, store = api
    body = "\n".join(json.dumps(make_pair(i, exp)) for i in range(7)) + "\n"
    async with http.post(
        "/v1/pairs", data=body, headers={"Content-Type": "application/x-ndjson"}
    ) as r:
        assert r.status == 200
        assert (await r.json())["inserted"] == 7
    assert await store.count_pairs(exp) == 7


async def test_retried_batch_stores_nothing_twice(api: Any, exp: str) -> None:
    _, http, store = api
    batch = [make_pair(i, exp) for i in range(20)]
    assert (await post(http, batch))[1]["inserted"] == 20
    status, body = await post(http, batch)
    assert (status, body["inserted"], body["duplicates"]) == (200, 0, 20)
    assert await store.count_pairs(exp) == 20


async def test_batch_with_one_malformed_pair_stores_the_others(api: Any, exp: str) -> None:
    _, http, store = api
    batch = [make_pair(i, exp) for i in range(6)]
    batch[4]["candidate"]["latency_ms"] = "slow"
    status, body = await post(http, batch)
    assert (status, body["inserted"], body["quarantined"]) == (200, 5, 1)
    assert body["refused"][0]["index"] == 4
    assert body["refused"][0]["detail"].startswith("pairs[4].candidate.latency_ms: ")
    assert await store.count_pairs(exp) == 5


async def test_unparseable_json_is_400(api: Any) -> None:
    _, http, _ = api
    async with http.post(
        "/v1/pairs", data=b'{"pairs": [', headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400
        assert "not JSON" in (await r.json())["error"]


async def test_token_is_required(api: Any, exp: str) -> None:
    base, _, store = api
    async with aiohttp.ClientSession(base_url=base) as anon:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with anon.post(
                "/v1/pairs", json={"pairs": [make_pair(1, exp)]}, headers=headers
            ) as r:
                assert r.status == 401
    assert await store.count_pairs(exp) == 0


async def test_body_over_the_limit_is_413_declared_or_streamed(api: Any, exp: str) -> None:
    _, http, store = api
    big = [make_pair(i, exp) for i in range(400)]  # ~300 KiB of JSON > 256 KiB
    status, body = await post(http, big)
    assert status == 413
    assert "exceeds" in body["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked transfer
        data = json.dumps({"pairs": big}).encode()
        for i in range(0, len(data), 64 * 1024):
            yield data[i : i + 64 * 1024]

    async with http.post(
        "/v1/pairs", data=chunks(), headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 413
    assert await store.count_pairs(exp) == 0


async def test_concurrent_clients_with_overlapping_batches_lose_and_double_nothing(
    api: Any, exp: str
) -> None:
    base, _, store = api
    dicts = [make_pair(i, exp, ts=T0 + timedelta(seconds=11 * i)) for i in range(600)]
    windows = [dicts[k * 100 : k * 100 + 200] for k in range(5)] * 2  # every pair sent 2–4 times

    async def client(batch: list[dict[str, Any]]) -> int:
        async with aiohttp.ClientSession(
            base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as http:
            status, body = await post(http, batch)
            assert status == 200
            return int(body["inserted"])

    inserted = await asyncio.gather(*(client(w) for w in windows))
    assert sum(inserted) == 600
    assert await store.count_pairs(exp) == 600
    async with (
        aiohttp.ClientSession(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as http,
        http.get(f"/v1/experiments/{exp}/summary") as r,
    ):
        assert (await r.json())["pairs"] == 600


def expected_quantile(values: list[float], q: float) -> float:
    """The order statistic the summary reports, timeouts (inf) ranked above everything."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


async def test_summary_equals_a_recomputation_from_the_raw_pairs(api: Any, exp: str) -> None:
    _, http, _ = api
    rng = random.Random(7)
    pairs, cand_lat, agree_n, agree_k = [], [], 0, 0
    # The first pair starts the experiment; the rest come after the 30 min warm-up, over 3 hours.
    for i in range(900):
        ts = T0 if i == 0 else T0 + timedelta(minutes=31, seconds=12 * i)
        outcome = rng.choices(["ok", "error", "timeout", "shed"], [90, 3, 5, 2])[0]
        p = rng.random()
        prod = [p, 1 - p]
        c = min(1.0, max(0.0, p + rng.uniform(-0.2, 0.2)))
        cand = [c, 1 - c]
        lat = rng.lognormvariate(2.0, 0.6)
        pairs.append(
            make_pair(
                i,
                exp,
                ts=ts,
                prod_probs=prod,
                cand_probs=cand,
                cand_outcome=outcome,
                cand_latency=250.0 if outcome == "timeout" else lat,
            )
        )
        if i and outcome in ("ok", "error"):  # an error with a status completed: it has a latency
            cand_lat.append(lat)
        elif i and outcome == "timeout":
            cand_lat.append(math.inf)
        if outcome == "ok":
            agree_n += 1
            agree_k += int(np.argmax(prod) == np.argmax(cand))
    for k in range(0, 900, 300):
        assert (await post(http, pairs[k : k + 300]))[0] == 200
    async with http.get(f"/v1/experiments/{exp}/summary") as r:
        s = await r.json()
    outcomes = [p["candidate"]["outcome"] for p in pairs]
    assert s["pairs"] == 900
    for o in ("ok", "error", "timeout", "shed", "skipped"):
        assert s["outcomes"]["cand"][o] == outcomes.count(o)
    assert s["outcomes"]["prod"]["ok"] == 900
    assert s["agreement"] == pytest.approx(agree_k / agree_n)
    lat = s["latency_ms"]["cand"]
    assert lat["censored"] == sum(math.isinf(v) for v in cand_lat)
    assert lat["n"] == sum(not math.isinf(v) for v in cand_lat)
    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        want = expected_quantile(cand_lat, q)
        if math.isinf(want):
            assert lat[name] == 250.0 and name in lat["censored_quantiles"]
        else:  # the histogram bucket of the exact order statistic
            assert lat[name] == pytest.approx(ddsketch_value(ddsketch_key(want)))
            assert lat[name] == pytest.approx(want, rel=0.01)
    assert sum(h["pairs"] for h in s["hours"]) == 900
    assert len(s["hours"]) == 4
    # A window of hours: [T0+1h, T0+2h) holds exactly the pairs stamped in it.
    start, end = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    async with http.get(
        f"/v1/experiments/{exp}/summary",
        params={"from": start.isoformat(), "to": end.isoformat()},
    ) as r:
        window = await r.json()
    in_window = [
        p for p in pairs if start.isoformat() <= p["ts"].replace("Z", "+00:00") < end.isoformat()
    ]
    assert window["pairs"] == len(in_window)


async def test_summary_of_an_unknown_experiment_is_404_and_bad_time_400(api: Any, exp: str) -> None:
    _, http, _ = api
    async with http.get("/v1/experiments/nope/summary") as r:
        assert r.status == 404
    await post(http, [make_pair(1, exp)])
    async with http.get(f"/v1/experiments/{exp}/summary", params={"from": "yesterday"}) as r:
        assert r.status == 400
        assert "from" in (await r.json())["error"]


async def test_health_and_metrics(api: Any, exp: str) -> None:
    _, http, _ = api
    async with http.get("/health/live") as r:
        assert r.status == 200
    async with http.get("/health/ready") as r:
        assert r.status == 200
    await post(http, [make_pair(i, exp) for i in range(3)])
    await post(http, [make_pair(i, exp) for i in range(3)])
    async with http.get("/metrics") as r:
        text = await r.text()
    assert "shadowtee_comparator_pairs_inserted_total 3.0" in text
    assert "shadowtee_comparator_pairs_duplicate_total 3.0" in text


async def test_metrics_speak_what_the_scraper_asks_for(api: Any, exp: str) -> None:
    """/metrics is prometheus-client's handler: the text format by default, OpenMetrics when
    asked for (as Prometheus does), gzip only when accepted; the same counts either way."""
    base, http, _ = api
    await post(http, [make_pair(i, exp) for i in range(2)])
    async with aiohttp.ClientSession(base_url=base, auto_decompress=False) as raw:
        async with raw.get("/metrics", headers={"Accept-Encoding": "identity"}) as r:
            assert r.content_type == "text/plain" and "Content-Encoding" not in r.headers
            text = (await r.read()).decode()
        om = {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"}
        async with raw.get("/metrics", headers=om) as r:
            assert r.content_type == "application/openmetrics-text"
            assert r.headers["Content-Encoding"] == "gzip"
            openmetrics = gzip.decompress(await r.read()).decode()
    assert "shadowtee_comparator_pairs_inserted_total 2.0" in text
    assert "shadowtee_comparator_pairs_inserted_total 2.0" in openmetrics
    assert openmetrics.endswith("# EOF\n")


async def test_verdict_endpoint_answers_with_a_decision_or_503(api: Any, exp: str) -> None:
    _, http, _ = api
    await post(http, [make_pair(i, exp) for i in range(10)])
    async with http.get(f"/v1/experiments/{exp}/verdict") as r:
        body = await r.json()
        assert r.status == 200
        assert body["decision"] in ("PROMOTE", "REJECT", "KEEP_OBSERVING")
    async with http.get("/v1/experiments/nope/verdict") as r:
        assert r.status == 404


@pytest.mark.parametrize(("workers", "closes"), [(1, False), (2, True)])
async def test_with_workers_a_batch_answered_while_another_is_in_hand_closes_its_connection(
    db_url: str, exp: str, workers: int, closes: bool
) -> None:
    app = create_app(ComparatorSettings(db=db_url, workers=workers), CollectorRegistry())
    gate = asyncio.Event()
    body = json.dumps({"pairs": [make_pair(i, exp) for i in range(3)]}).encode()

    async def slowly() -> AsyncIterator[bytes]:  # the first batch stays in hand until the gate
        yield body[:10]
        await gate.wait()
        yield body[10:]

    headers = {"Content-Type": "application/json"}
    async with running(app) as base, aiohttp.ClientSession(base_url=base) as http:
        first = asyncio.create_task(http.post("/v1/pairs", data=slowly(), headers=headers))
        for _ in range(200):  # until the server holds the first batch's request
            if app[_IN_FLIGHT].n:
                break
            await asyncio.sleep(0.01)
        assert app[_IN_FLIGHT].n == 1
        second = {"pairs": [make_pair(i, exp) for i in range(3, 6)]}
        async with http.post("/v1/pairs", json=second) as r:
            assert r.status == 200
            assert (r.headers.get("Connection", "").lower() == "close") is closes
        gate.set()
        async with await first as r:
            assert r.status == 200
            assert r.headers.get("Connection", "").lower() != "close"  # it was the only one
            assert (await r.json())["inserted"] == 3
    assert app[_IN_FLIGHT].n == 0


async def test_with_workers_a_batch_is_not_validated_while_another_is_being_written(
    db_url: str, exp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import comparator.ingest
    import comparator.routes

    app = create_app(ComparatorSettings(db=db_url, workers=2), CollectorRegistry())
    writing_when_validated: list[int] = []
    validate = comparator.ingest.screen_body

    def spy(body: bytes, content_type: str) -> Any:
        writing_when_validated.append(app[STORE]._writing)
        return validate(body, content_type)

    monkeypatch.setattr(comparator.routes, "screen_body", spy)
    batches = [[make_pair(20 * k + i, exp) for i in range(20)] for k in range(6)]
    async with running(app) as base, aiohttp.ClientSession(base_url=base) as http:
        answers = await asyncio.gather(*(post(http, b) for b in batches))
    assert [status for status, _ in answers] == [200] * 6
    assert sum(body["inserted"] for _, body in answers) == 120
    assert writing_when_validated == [0] * 6


async def test_every_read_needs_the_token_and_the_probes_do_not(api: Any, exp: str) -> None:
    base, http, _ = api
    await post(http, [make_pair(1, exp)])
    async with aiohttp.ClientSession(base_url=base) as anon:
        for path in ("/v1/experiments", f"/v1/experiments/{exp}/summary",
                     f"/v1/experiments/{exp}/verdict", "/v1/experiments/nope/verdict"):  # fmt: skip
            async with anon.get(path, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401, path
            async with anon.get(path) as r:
                assert r.status == 401, path
        for path in ("/health/live", "/health/ready", "/metrics"):
            async with anon.get(path) as r:
                assert r.status == 200, path
        async with anon.get("/metrics") as r:
            assert "shadowtee_comparator_batches_rejected" in await r.text()


async def test_the_verdict_route_stores_nothing_and_refuses_a_future_at(api: Any, exp: str) -> None:
    _, http, store = api
    await post(http, [make_pair(i, exp) for i in range(10)])
    future = (T0 + timedelta(days=365 * 80)).isoformat()
    async with http.get(f"/v1/experiments/{exp}/verdict", params={"at": future}) as r:
        assert r.status == 400
        assert (await r.json())["error"].startswith("at: ")
    for params in ({}, {"at": (T0 + timedelta(hours=1)).isoformat()}):
        async with http.get(f"/v1/experiments/{exp}/verdict", params=params) as r:
            assert r.status == 200
    assert await store.latest_verdict(exp) is None
    assert await store.load_verdict_state(exp) is None
