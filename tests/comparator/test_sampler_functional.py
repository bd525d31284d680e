"""The memory sampler against real fake ``/metrics`` servers on 127.0.0.1, one of them unreachable."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from comparator.metrics import ComparatorMetrics
from comparator.sampler import MemorySampler, parse_memory
from comparator.store.reads import MemorySample
from comparator.store.store import Store
from tests.comparator.store_support import (  # noqa: F401 - fixtures
    db_url_fixture,
    exp_fixture,
    running,
    store_fixture,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def exposition(
    rss: float, gpu: tuple[float, float] | None = None, limit: float | None = None
) -> bytes:
    """What a model server's /metrics says, written by prometheus_client itself."""
    reg = CollectorRegistry()
    Gauge("process_resident_memory_bytes", "rss", registry=reg).set(rss)
    if limit is not None:
        Gauge("shadowtee_serving_memory_limit_bytes", "limit", registry=reg).set(limit)
    if gpu is not None:
        used = Gauge("shadowtee_serving_gpu_memory_used_bytes", "used", ["device"], registry=reg)
        total = Gauge("shadowtee_serving_gpu_memory_total_bytes", "total", ["device"], registry=reg)
        for dev in ("0", "1"):
            used.labels(device=dev).set(gpu[0] / 2)
            total.labels(device=dev).set(gpu[1] / 2)
    Gauge("unrelated_bytes", "noise", registry=reg).set(5)
    return generate_latest(reg)


def fake_server(body: bytes, status: int = 200) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=body, status=status, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def test_parse_memory_reads_rss_limit_and_summed_gpu() -> None:
    samples = parse_memory(exposition(1.5e9, gpu=(2e9, 8e9), limit=4e9).decode(), "cand", NOW)
    assert samples == [
        MemorySample(NOW, "cand", "rss", 1.5e9, 4e9),
        MemorySample(NOW, "cand", "gpu", 2e9, 8e9),
    ]


def test_parse_memory_without_memory_metrics_is_empty() -> None:
    assert parse_memory("# nothing here\nother_metric 1\n", "prod", NOW) == []


async def test_scrape_stores_samples_of_both_sides(
    store: Store, exp: str, http: aiohttp.ClientSession
) -> None:
    async with (
        running(fake_server(exposition(1e9, limit=2e9))) as prod,
        running(fake_server(exposition(1.2e9, gpu=(3e9, 16e9)))) as cand,
    ):
        metrics = ComparatorMetrics.create(CollectorRegistry())
        sampler = MemorySampler(
            store,
            {"prod": prod + "/metrics", "cand": cand + "/metrics"},
            experiment=exp,
            metrics=metrics,
            clock=lambda: NOW,
        )
        await sampler.scrape_once(http)
    got = await store.memory_samples(exp)
    assert set(got) == {
        MemorySample(NOW, "prod", "rss", 1e9, 2e9),
        MemorySample(NOW, "cand", "rss", 1.2e9, None),
        MemorySample(NOW, "cand", "gpu", 3e9, 16e9),
    }
    assert metrics.scrapes["prod"]._value.get() == 1
    assert metrics.scrape_errors["cand"]._value.get() == 0


async def test_unreachable_or_broken_target_is_a_counted_gap_not_a_crash(
    store: Store, exp: str, closed_port_url: str, http: aiohttp.ClientSession
) -> None:
    async with (
        running(fake_server(exposition(1e9))) as prod,
        running(fake_server(b"oops", status=500)) as broken,
    ):
        metrics = ComparatorMetrics.create(CollectorRegistry())
        down = MemorySampler(
            store,
            {"prod": prod + "/metrics", "cand": closed_port_url},
            experiment=exp,
            metrics=metrics,
            clock=lambda: NOW,
        )
        samples = await down.scrape_once(http)
        assert [s.side for s in samples] == ["prod"]
        down.targets["cand"] = broken + "/metrics"
        await down.scrape_once(http)
    assert metrics.scrape_errors["cand"]._value.get() == 2
    assert metrics.scrapes["prod"]._value.get() == 2
    assert [s.side for s in await store.memory_samples(exp)] == ["prod", "prod"]


async def test_garbage_exposition_is_a_gap(
    store: Store, exp: str, http: aiohttp.ClientSession
) -> None:
    async with running(fake_server(b"process_resident_memory_bytes not-a-number\n")) as bad:
        metrics = ComparatorMetrics.create(CollectorRegistry())
        sampler = MemorySampler(
            store, {"cand": bad + "/metrics"}, experiment=exp, metrics=metrics, clock=lambda: NOW
        )
        assert await sampler.scrape_once(http) == []
    assert metrics.scrape_errors["cand"]._value.get() == 1


async def test_run_loop_is_bounded_and_keeps_going_past_failures(
    store: Store, exp: str, closed_port_url: str
) -> None:
    metrics = ComparatorMetrics.create(CollectorRegistry())
    async with running(fake_server(exposition(7e8))) as prod:
        sampler = MemorySampler(
            store,
            {"prod": prod + "/metrics", "cand": closed_port_url},
            experiment=exp,
            metrics=metrics,
            interval_s=0.01,
        )
        await sampler.run(iterations=3)
    assert len(await store.memory_samples(exp)) == 3
    assert metrics.scrape_errors["cand"]._value.get() == 3
