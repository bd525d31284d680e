"""Shipping on real sockets: batches with a bearer token, spool during an outage, replay after."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.proxy.fakes import (
    FakeCandidate,
    FakeComparator,
    admin_status,
    free_port,
    prod_app,
    running_proxy,
    serve_app,
    wait_for,
)

INFER = "/v2/models/m/infer"


async def _send(client: aiohttp.ClientSession, url: str, n: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        async with client.post(url + INFER, json={"i": i}) as resp:
            assert resp.status == 200
            ids.append(resp.headers["X-Shadow-Request-Id"])
    return ids


def _spooled(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


async def test_pairs_are_spooled_while_the_comparator_is_down_and_replayed_exactly_once(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    port = free_port()
    comparator = FakeComparator(token="t0k")
    candidate = FakeCandidate()
    async with (
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        running_proxy(
            prod=prod,
            candidate=cand,
            comparator=f"http://127.0.0.1:{port}",
            comparator_token="t0k",
            batch_size=5,
            ship_retries=1,
            spool_dir=str(tmp_path),
        ) as proxy,
    ):
        ids = await _send(client, proxy.url, 23)
        await wait_for(lambda: len(_spooled(tmp_path)) >= 4, "spooled batches")
        # The comparator comes back on the same address; more traffic arrives meanwhile.
        async with serve_app(comparator.app(), port=port):
            ids += await _send(client, proxy.url, 7, start=23)
            await wait_for(lambda: len(comparator.pairs) == 30, "all 30 pairs delivered")
            status = await admin_status(client, proxy.admin)
        pairs = status["counters"]["pairs"]
        assert pairs["replayed"] > 0 and pairs["spooled"] == pairs["replayed"]
        assert pairs["replayed"] + pairs["delivered"] == 30
        assert sum(pairs["dropped"].values()) == 0
        assert status["gauges"]["spool_batches"] == 0
    assert sorted(comparator.request_ids) == sorted(ids)  # every pair exactly once
    assert list(comparator.request_ids[:23]) == ids[:23]  # replayed in order
    assert not _spooled(tmp_path)


async def test_spool_survives_a_restart_of_the_proxy(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    port = free_port()
    comparator = FakeComparator()
    async with (
        serve_app(prod_app()) as prod,
        serve_app(FakeCandidate().app()) as cand,
    ):
        common: dict[str, Any] = {
            "prod": prod, "candidate": cand, "comparator": f"http://127.0.0.1:{port}",
            "spool_dir": str(tmp_path), "ship_retries": 0,
        }  # fmt: skip
        async with running_proxy(**common) as proxy:
            ids = await _send(client, proxy.url, 6)
        # Shutdown spooled what the comparator could not take.
        assert sum(int(p.stem.split("-")[1]) for p in _spooled(tmp_path)) == 6
        async with serve_app(comparator.app(), port=port), running_proxy(**common):
            await wait_for(lambda: len(comparator.pairs) == 6, "replay after restart")
    assert comparator.request_ids == ids


async def test_a_full_spool_drops_and_counts(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    async with (
        serve_app(prod_app()) as prod,
        serve_app(FakeCandidate().app()) as cand,
        running_proxy(
            prod=prod,
            candidate=cand,
            comparator=f"http://127.0.0.1:{free_port()}",
            spool_dir=str(tmp_path),
            max_spool_bytes=0,
            ship_retries=0,
            batch_size=1,
        ) as proxy,
    ):
        await _send(client, proxy.url, 3)

        async def dropped() -> int:
            return int(
                (await admin_status(client, proxy.admin))["counters"]["pairs"]["dropped"][
                    "spool_full"
                ]
            )

        for _ in range(500):
            if await dropped() == 3:
                break
            await asyncio.sleep(0.01)
        assert await dropped() == 3


async def test_rejected_batch_is_dropped_and_counted_not_retried_forever(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    comparator = FakeComparator(fail_status=422)
    async with (
        serve_app(prod_app()) as prod,
        serve_app(FakeCandidate().app()) as cand,
        serve_app(comparator.app()) as comp,
        running_proxy(prod=prod, candidate=cand, comparator=comp, spool_dir=str(tmp_path)) as proxy,
    ):
        await _send(client, proxy.url, 2)
        for _ in range(500):
            counters = (await admin_status(client, proxy.admin))["counters"]
            if counters["pairs"]["dropped"]["rejected"] == 2:
                break
            await asyncio.sleep(0.01)
        assert counters["pairs"]["dropped"]["rejected"] == 2
        assert counters["pairs"]["spooled"] == 0
