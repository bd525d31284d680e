"""The admin port on real sockets: metrics, health, status without secrets."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import aiohttp
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.proxy.fakes import (
    FakeCandidate,
    admin_status,
    free_port,
    prod_app,
    running_proxy,
    serve_app,
)


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


async def test_metrics_speak_what_the_scraper_asks_for(tmp_path: Path) -> None:
    """/metrics is prometheus-client's handler: the text format by default, OpenMetrics when the
    scraper asks for it (as Prometheus does), gzip only when the scraper accepts it; the same
    families either way."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as client,
        serve_app(prod_app()) as prod,
        serve_app(FakeCandidate().app()) as cand,
        running_proxy(prod=prod, candidate=cand, spool_dir=str(tmp_path)) as proxy,
    ):
        url = proxy.admin + "/metrics"
        async with client.get(url, headers={"Accept-Encoding": "identity"}) as resp:
            assert resp.content_type == "text/plain"
            assert "Content-Encoding" not in resp.headers
            text = (await resp.read()).decode()
        om = {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"}
        async with client.get(url, headers=om) as resp:
            assert resp.content_type == "application/openmetrics-text"
            assert resp.headers["Content-Encoding"] == "gzip"
            openmetrics = gzip.decompress(await resp.read()).decode()
    assert openmetrics.endswith("# EOF\n")
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "shadowtee_proxy_requests" in names and "shadowtee_proxy_tee_inflight" in names
    om_names = {f.name for f in openmetrics_families(openmetrics)}
    assert {"shadowtee_proxy_requests", "shadowtee_proxy_tee_inflight"} <= om_names


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


# --- live control of the tee ---------------------------------------------------------------------

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_without_an_admin_token_there_is_no_write_api(tmp_path: Path) -> None:
    candidate = FakeCandidate()
    async with (
        aiohttp.ClientSession() as client,
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        running_proxy(prod=prod, candidate=cand, spool_dir=str(tmp_path)) as proxy,
    ):
        for path in ("pause", "resume", "sample-rate", "candidate"):
            async with client.post(
                f"{proxy.admin}/admin/tee/{path}", json={"sample_rate": 0}, headers=AUTH
            ) as resp:
                assert resp.status in (404, 405), path
        async with client.get(proxy.admin + "/admin/tee") as resp:
            view = await resp.json()
    assert view["paused"] is False and view["sample_rate"] == 1.0
    assert view["changes"] == {"operator": 0, "breaker": 0}


async def test_a_write_without_the_token_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    candidate = FakeCandidate()
    async with (
        aiohttp.ClientSession() as client,
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        running_proxy(
            prod=prod, candidate=cand, admin_token=TOKEN, spool_dir=str(tmp_path)
        ) as proxy,
    ):
        attempts = [
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},  # not a bearer credential
            {"Authorization": f"Bearer {TOKEN}x"},
        ]
        for headers in attempts:
            async with client.post(proxy.admin + "/admin/tee/pause", headers=headers) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            async with client.post(
                proxy.admin + "/admin/tee/sample-rate", json={"sample_rate": 0}, headers=headers
            ) as resp:
                assert resp.status == 401
        async with client.get(proxy.admin + "/admin/status") as resp:
            text = await resp.text()
            status = await resp.json()
    assert TOKEN not in text
    assert status["config"]["admin_token"] == "***"
    assert status["tee"]["paused"] is False
    assert status["tee"]["sample_rate"] == 1.0
    assert status["tee"]["last_change"] is None


async def test_bad_values_are_400_naming_the_field(tmp_path: Path) -> None:
    candidate = FakeCandidate()
    async with (
        aiohttp.ClientSession() as client,
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        running_proxy(
            prod=prod, candidate=cand, admin_token=TOKEN, spool_dir=str(tmp_path)
        ) as proxy,
    ):
        cases = [
            ("sample-rate", b'{"sample_rate": 2}', "sample_rate"),
            ("sample-rate", b'{"sample_rate": "0.5"}', "sample_rate"),
            ("sample-rate", b"{}", "sample_rate"),
            ("sample-rate", b"[0.5]", "body"),
            ("sample-rate", b"not json", "body"),
            ("candidate", b'{"candidate": "https://127.0.0.1:1"}', "candidate"),
            ("candidate", b'{"candidate": "http://127.0.0.1:1/v2"}', "candidate"),
            ("candidate", b'{"candidate": "http://127.0.0.1"}', "candidate"),
            ("pause", b'{"by": ""}', "by"),
            ("pause", b"x" * (64 * 1024), "body"),
        ]
        for path, body, field in cases:
            async with client.post(
                f"{proxy.admin}/admin/tee/{path}", data=body, headers=AUTH
            ) as resp:
                assert resp.status == 400, (path, body[:40])
                doc = await resp.json()
                assert doc["field"] == field, (path, body[:40], doc)
        async with client.get(proxy.admin + "/admin/tee") as resp:
            view = await resp.json()
    assert view["changes"]["operator"] == 0
    assert view["candidate"] == cand


async def test_pause_rate_and_candidate_take_effect_at_once(tmp_path: Path) -> None:
    first, second = FakeCandidate(), FakeCandidate()
    async with (
        aiohttp.ClientSession() as client,
        serve_app(prod_app()) as prod,
        serve_app(first.app()) as cand1,
        serve_app(second.app()) as cand2,
        running_proxy(
            prod=prod, candidate=cand1, admin_token=TOKEN, spool_dir=str(tmp_path)
        ) as proxy,
    ):

        async def send(n: int) -> None:
            for _ in range(n):
                async with client.post(proxy.url + "/v2/models/m/infer", json={}) as resp:
                    assert resp.status == 200

        async def change(path: str, doc: dict[str, object]) -> dict[str, object]:
            async with client.post(
                f"{proxy.admin}/admin/tee/{path}", json=doc, headers=AUTH
            ) as resp:
                assert resp.status == 200, await resp.text()
                view: dict[str, object] = await resp.json()
                return view

        await send(2)
        view = await change("pause", {"by": "alice"})
        assert view["paused"] is True and view["paused_by"] == "operator"
        await send(3)
        view = await change("resume", {})
        assert view["paused"] is False
        await send(1)
        view = await change("sample-rate", {"sample_rate": 0})
        assert view["sample_rate"] == 0.0
        await send(4)
        await change("sample-rate", {"sample_rate": 1})
        view = await change("candidate", {"candidate": cand2 + "/"})
        assert view["candidate"] == cand2
        await send(2)
        for _ in range(500):  # bounded: until every pair left the buffer
            status = await admin_status(client, proxy.admin)
            if status["accounting"]["in_flight"]["buffer"] == 0:
                break
            await asyncio.sleep(0.01)
        async with client.get(proxy.admin + "/metrics") as resp:
            families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    assert len(first.requests) == 3  # 2 before the pause, 1 after the resume
    assert len(second.requests) == 2  # after the switch, only the new candidate
    counters = status["counters"]
    assert counters["tee_paused"] == {"operator": 3, "breaker": 0}
    assert counters["not_sampled"] == 4
    assert counters["teed"] == 5
    assert status["accounting"]["teed"] == 5  # paused and not sampled requests make no pair
    assert status["accounting"]["unaccounted"] == 0
    tee = status["tee"]
    assert tee["changes"] == {"operator": 5, "breaker": 0}
    assert tee["last_change"]["what"] == "candidate"
    assert tee["last_change"]["source"] == "operator"
    assert tee["last_change"]["to"] == cand2
    paused = {s.labels["source"]: s.value for s in families["shadowtee_proxy_tee_paused"].samples}
    assert paused == {"operator": 3.0, "breaker": 0.0}
    info = families["shadowtee_proxy_tee_candidate_info"].samples
    assert [s.labels["url"] for s in info] == [cand2]
    rate = families["shadowtee_proxy_tee_sample_rate"].samples[0].value
    assert rate == 1.0
    changes = {
        s.labels["source"]: s.value
        for s in families["shadowtee_proxy_tee_changes"].samples
        if s.name.endswith("_total")
    }
    assert changes == {"operator": 5.0, "breaker": 0.0}
