"""SIGTERM under load loses nothing; a restart replays what the last run spooled."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import httpx
import pytest
from aiohttp import web

from tests.reliability.conftest import Upstreams
from tests.reliability.fakes import (
    FakeComparator,
    Gate,
    ProxyProcess,
    free_port,
    infer_body,
    wait_until,
)

RID = "X-Shadow-Request-Id"
DONE = 200  # requests that finish before the signal
HELD = 20  # requests production is still working on when SIGTERM arrives


async def _post_all(url: str, paths: list[str], concurrency: int = 16) -> list[tuple[int, str]]:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one(i: int, path: str) -> tuple[int, str]:
            async with sem, session.post(url + path, data=infer_body(i)) as resp:
                await resp.read()
                return resp.status, resp.headers.get(RID, "")

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(paths)))


@pytest.mark.timeout(90)
def test_sigterm_under_load_loses_no_response_and_no_pair(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    proxy = start_proxy(
        prod=up.prod_url,
        candidate=up.cand_url,
        comparator=up.comp_url,
        env={"SHADOWTEE_PROXY__FLUSH_INTERVAL_MS": "60000"},  # only the shutdown flush ships
    )
    first = asyncio.run(_post_all(proxy.url, ["/v2/models/ok/infer"] * DONE))
    assert [s for s, _ in first] == [200] * DONE

    async def held_then_signal() -> list[tuple[int, str]]:
        held = asyncio.create_task(
            _post_all(proxy.url, ["/v2/models/phang/infer"] * HELD, concurrency=HELD)
        )
        await asyncio.to_thread(
            wait_until,
            lambda: sum(s["mode"] == "phang" for s in up.prod.seen) == HELD,
            "every held request at production",
        )
        proxy.proc.send_signal(15)

        def draining() -> bool:
            with httpx.Client(timeout=5) as client:
                return client.get(proxy.admin + "/health/ready").status_code == 503

        await asyncio.to_thread(wait_until, draining, "the proxy to start draining")
        up.prod.gate.open()
        return await held

    second = asyncio.run(held_then_signal())
    rc = proxy.proc.wait(60)
    assert rc == 0, proxy.stderr()[-2000:]
    assert [s for s, _ in second] == [200] * HELD  # every in-flight client got its answer
    sent = {rid for _, rid in first + second}
    assert len(sent) == DONE + HELD
    ids = up.comp.request_ids
    assert len(ids) == len(set(ids)) == DONE + HELD  # every pair, once
    assert set(ids) == sent


@pytest.mark.timeout(90)
def test_a_restarted_proxy_replays_a_non_empty_spool(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    spool = tmp_path / "shared-spool"
    port = free_port()
    comparator = f"http://127.0.0.1:{port}"  # nothing listens yet
    first = start_proxy(
        prod=up.prod_url, candidate=up.cand_url, comparator=comparator, spool_dir=spool
    )
    answers = asyncio.run(_post_all(first.url, ["/v2/models/ok/infer"] * 30))
    assert [s for s, _ in answers] == [200] * 30
    wait_until(first.settled, "pairs complete")
    assert first.terminate() == 0
    assert any(spool.iterdir()), "nothing was spooled"

    comp = FakeComparator()
    up.lt.serve(comp.app(), port=port)
    second = start_proxy(
        prod=up.prod_url, candidate=up.cand_url, comparator=comparator, spool_dir=spool
    )
    sent = {rid for _, rid in answers}
    wait_until(lambda: set(comp.request_ids) >= sent, "the spooled pairs at the comparator")
    assert len(comp.request_ids) == len(set(comp.request_ids)) == 30
    wait_until(lambda: second.gauges()["spool_pairs"] == 0, "an empty spool")
    assert second.status()["counters"]["pairs"]["replayed"] == 30


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_with_a_comparator_that_never_answers_ends_within_two_ship_timeouts(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    """A comparator that takes each batch's connection and never answers. On SIGTERM the
    shipper retries nothing more: the batch being sent gets the attempt under way, the last pass
    one attempt, and the rest is spooled — so the drain takes about two ``ship_timeout_ms``, not
    the retries' sum (which outlasted the deployment's 45 s grace with the defaults: 54 s)."""
    gate = Gate(up.lt)

    async def ingest(request: web.Request) -> web.Response:
        await gate.event.wait()  # never, in this test
        return web.json_response({})

    comp = web.Application()
    comp.router.add_post("/v1/pairs", ingest)
    timeout_s, spool = 2.0, tmp_path / "spool"
    proxy = start_proxy(
        spool_dir=spool,
        prod=up.prod_url,
        candidate=up.cand_url,
        comparator=up.lt.serve(comp),
        env={
            "SHADOWTEE_PROXY__SHIP_TIMEOUT_MS": str(int(timeout_s * 1000)),
            "SHADOWTEE_PROXY__SHIP_RETRIES": "5",
            "SHADOWTEE_PROXY__BATCH_SIZE": "10",
        },
    )
    with httpx.Client(timeout=10) as client:
        for _ in range(30):
            assert client.post(proxy.url + "/v2/models/ok/infer", content=b"{}").status_code == 200
    wait_until(lambda: proxy.metric("shadowtee_proxy_ship_failures_total") >= 1, "a failed POST")
    started = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    rc = proxy.proc.wait(60)
    took = time.monotonic() - started
    assert rc == 0
    # The attempt under way, the last pass's one attempt, the tee's 1 s grace, and slack.
    assert took < 2 * timeout_s + 1.0 + 2.0, took  # with the retries: 5 more attempts and backoff
    spooled = sum(len(json.loads(f.read_bytes())["pairs"]) for f in spool.glob("*.json"))
    assert spooled == 30  # every pair is in the spool, to be replayed by the next process
    gate.open()
