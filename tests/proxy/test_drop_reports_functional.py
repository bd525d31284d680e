"""Pairs a proxy drops reach the report: the proxy reports its counts to the real comparator."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from comparator.app import create_app
from comparator.settings import ComparatorSettings
from comparator.store.reads import MemorySample
from comparator.store.store import Store
from reports import write_report
from tests.proxy.fakes import FakeCandidate, free_port, prod_app, running_proxy, serve_app

INFER = "/v2/models/m/infer"


async def _send(client: aiohttp.ClientSession, url: str, n: int) -> None:
    for i in range(n):
        async with client.post(url + INFER, json={"i": i}) as resp:
            assert resp.status == 200


async def _drops(db: str) -> dict[str, dict[str, int]]:
    store = await Store.open(db)
    try:
        info = await store.get_experiment("default")
        return {} if info is None else dict(info.config.get("proxy_drops", {}))
    finally:
        await store.close()


async def test_pairs_dropped_past_the_spool_bound_are_counted_in_the_report(
    tmp_path: Path,
) -> None:
    port = free_port()
    db = f"sqlite:///{tmp_path}/c.db"
    settings = ComparatorSettings(db=db, verdict_interval_s=0)
    async with (
        aiohttp.ClientSession() as client,
        serve_app(prod_app()) as prod,
        serve_app(FakeCandidate().app()) as cand,
        running_proxy(
            prod=prod,
            candidate=cand,
            comparator=f"http://127.0.0.1:{port}",
            spool_dir=str(tmp_path / "spool"),
            max_spool_bytes=0,  # nothing fits: every pair shipped during the outage is dropped
            ship_retries=0,
            batch_size=1,
        ) as proxy,
    ):
        await _send(client, proxy.url, 3)
        for _ in range(500):
            async with client.get(proxy.admin + "/admin/status") as resp:
                if (await resp.json())["counters"]["pairs"]["dropped"].get("spool_full") == 3:
                    break
            await asyncio.sleep(0.01)
        # The comparator returns; later pairs are delivered and the drop counts follow them.
        async with serve_app(create_app(settings, CollectorRegistry()), port=port):
            await _send(client, proxy.url, 2)
            for _ in range(500):
                if (reports := await _drops(db)) and any(reports.values()):
                    break
                await asyncio.sleep(0.02)
    assert [counts for counts in reports.values()] == [{"spool_full": 3}]

    store = await Store.open(db)
    try:
        paths = await write_report(store, "default", datetime.now(UTC).date(), tmp_path / "r")
    finally:
        await store.close()
    traffic = json.loads(paths.json.read_text())["traffic"]
    assert traffic["spool_drops"] == 3
    assert "spool_full 3" in traffic["spool_drops_note"]
    assert "Pairs dropped by proxies" in paths.html.read_text()


async def test_drop_reports_are_idempotent_authenticated_and_validated(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/c.db"
    settings = ComparatorSettings(db=db, verdict_interval_s=0, token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    async with (
        aiohttp.ClientSession() as client,
        serve_app(create_app(settings, CollectorRegistry())) as url,
    ):
        drops = f"{url}/v1/experiments/default/drops"
        body = {"proxy_id": "p1", "dropped": {"spool_full": 5}}
        async with client.post(drops, json=body, headers=auth) as resp:
            assert resp.status == 404  # no such experiment yet
        store = await Store.open(db)
        try:
            sample = MemorySample(datetime.now(UTC), "prod", "rss", 1.0, None)
            await store.add_memory_samples("default", [sample])  # the experiment now exists
        finally:
            await store.close()
        for report in (body, {"proxy_id": "p1", "dropped": {"spool_full": 3}}, body):
            async with client.post(drops, json=report, headers=auth) as resp:
                assert resp.status == 200  # a retried or late (smaller) report changes nothing
        async with client.post(
            drops, json={"proxy_id": "p2", "dropped": {"queue_full": 2}}, headers=auth
        ) as resp:
            assert resp.status == 200
        assert await _drops(db) == {"p1": {"spool_full": 5}, "p2": {"queue_full": 2}}
        async with client.post(drops, json=body) as resp:
            assert resp.status == 401
        async with client.post(
            drops, json={"proxy_id": "p1", "dropped": {"x": -1}}, headers=auth
        ) as resp:
            assert resp.status == 422
            assert "dropped" in (await resp.json())["error"]
