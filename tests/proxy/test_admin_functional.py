"""The admin port on real sockets: metrics, health, status without secrets."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.proxy.fakes import FakeCandidate, free_port, prod_app, running_proxy, serve_app


async def test_metrics_health_and_status(tmp_path: Path) -> None:
    candidate = FakeCandidate()
    async with (
        aiohttp.ClientSession() as client,
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        running_proxy(
            prod=prod, candidate=cand, comparator_token="hunter2", spool_dir=str(tmp_path)
        ) as proxy,
    ):
        for _ in range(3):
            async with client.post(proxy.url + "/v2/models/m/infer", json={}) as resp:
                assert resp.status == 200
        for _ in range(500):  # bounded: until all three pairs are out of the buffer
            async with client.get(proxy.admin + "/admin/status") as resp:
                if (await resp.json())["counters"]["pairs"]["emitted"] == 3:
                    break
        async with client.get(proxy.admin + "/health/live") as resp:
            assert resp.status == 200
        async with client.get(proxy.admin + "/health/ready") as resp:
            assert resp.status == 200
        async with client.get(proxy.admin + "/admin/status") as resp:
            text = await resp.text()
            assert "hunter2" not in text
            status = await resp.json()
        assert status["config"]["comparator_token"] == "***"
        assert status["counters"]["requests"] == 3
        async with client.get(proxy.admin + "/metrics") as resp:
            families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    prod_latency = families["shadowtee_proxy_production_latency_seconds"]
    count = next(s.value for s in prod_latency.samples if s.name.endswith("_count"))
    assert count == 3
    for name in (
        "shadowtee_proxy_candidate_latency_seconds",
        "shadowtee_proxy_candidate_outcomes",
        "shadowtee_proxy_tee_inflight",
        "shadowtee_proxy_pairing_buffer_pairs",
        "shadowtee_proxy_spool_bytes",
        "shadowtee_proxy_pairs_dropped",
    ):
        assert name in families, name
    dropped = {
        s.labels["reason"]: s.value for s in families["shadowtee_proxy_pairs_dropped"].samples
    }
    assert dropped["no_comparator"] == 3  # counted, not silent, even without a comparator


async def test_not_ready_when_production_is_unreachable(tmp_path: Path) -> None:
    async with (
        aiohttp.ClientSession() as client,
        running_proxy(
            prod=f"http://127.0.0.1:{free_port()}",
            candidate="http://127.0.0.1:9",
            spool_dir=str(tmp_path),
        ) as proxy,
        client.get(proxy.admin + "/health/ready") as resp,
    ):
        assert resp.status == 503
        assert "unreachable" in (await resp.json())["reason"]
