"""Periodic looks on a real comparator: verdict gauges on /metrics and a signed decision webhook."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from comparator.app import create_app
from comparator.judge.policy import DEMO_POLICY_PATH
from comparator.judge.webhook import SIGNATURE_HEADER, verify
from comparator.settings import ComparatorSettings
from tests.comparator.store_support import running
from tests.comparator.verdict_fakes import wire_pair

SECRET = "hook-secret"


class Receiver:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(body, SECRET.encode(), request.headers.get(SIGNATURE_HEADER)):
            self.bad_signatures += 1
            return web.Response(status=401)
        self.events.append(json.loads(body))
        self.arrived.set()
        return web.Response(status=204)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app


def _settings(tmp_path: Path, hook_url: str, interval: float) -> ComparatorSettings:
    return ComparatorSettings(
        db=f"sqlite:///{tmp_path}/c.db",
        policy=str(DEMO_POLICY_PATH),
        verdict_interval_s=interval,
        webhook_url=hook_url,
        webhook_secret=SECRET,
    )


async def _post_pairs(http: aiohttp.ClientSession, url: str, exp: str, *, bad: bool) -> None:
    """1,500 pairs of ``exp``; a third of the candidate's calls fail when ``bad``."""
    pairs = [wire_pair(i, exp, cand_error=bad and i % 3 == 0) for i in range(1500)]
    body = json.dumps({"pairs": [p.model_dump(mode="json") for p in pairs]}).encode()
    r = await http.post(
        f"{url}/v1/pairs", data=io.BytesIO(body), headers={"Content-Type": "application/json"}
    )
    assert r.status in (200, 202), await r.text()


async def test_a_changed_decision_is_posted_once_signed_and_shown_on_metrics(
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    async with running(receiver.app()) as hook:
        # GET …/verdict stores nothing (comparator.app): the periodic look takes the saved one.
        app = create_app(_settings(tmp_path, f"{hook}/hook", 0.05), registry=CollectorRegistry())
        async with running(app) as url, aiohttp.ClientSession() as http:
            await _post_pairs(http, url, "bad", bad=True)
            await asyncio.wait_for(receiver.arrived.wait(), timeout=20)
            for _ in range(2):
                r = await http.get(f"{url}/v1/experiments/bad/verdict")
                assert (await r.json())["decision"] == "REJECT"
            metrics = await (await http.get(f"{url}/metrics")).text()

    assert receiver.bad_signatures == 0
    assert [(e["event"], e["experiment"], e["decision"]) for e in receiver.events] == [
        ("decision_changed", "bad", "REJECT")
    ]
    assert 'shadowtee_comparator_verdict{decision="REJECT",experiment="bad"} 1.0' in metrics
    assert 'shadowtee_comparator_verdict{decision="PROMOTE",experiment="bad"} 0.0' in metrics
    assert "shadowtee_comparator_verdict_score" in metrics


async def test_the_periodic_loop_judges_every_experiment_without_being_asked(
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    async with running(receiver.app()) as hook:
        app = create_app(_settings(tmp_path, f"{hook}/hook", 0.05), registry=CollectorRegistry())
        async with running(app) as url, aiohttp.ClientSession() as http:
            await _post_pairs(http, url, "good", bad=False)
            await asyncio.wait_for(receiver.arrived.wait(), timeout=20)
            metrics = await (await http.get(f"{url}/metrics")).text()
    assert receiver.events[0]["experiment"] == "good"
    assert receiver.events[0]["decision"] == "PROMOTE"
    assert 'shadowtee_comparator_verdict{decision="PROMOTE",experiment="good"} 1.0' in metrics


def test_a_webhook_without_a_secret_is_refused_at_start(tmp_path: Path) -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="webhook_secret"):
        ComparatorSettings(db=f"sqlite:///{tmp_path}/c.db", webhook_url="http://127.0.0.1:9/hook")


async def test_a_worker_without_the_looks_shows_the_gauges_of_the_looks_another_saved(
    tmp_path: Path,
) -> None:
    from comparator.routes import Role

    receiver = Receiver()
    async with running(receiver.app()) as hook:
        settings = _settings(tmp_path, f"{hook}/hook", 0.05)
        looker = create_app(settings, registry=CollectorRegistry())
        follower = create_app(settings, registry=CollectorRegistry(), role=Role(background=False))
        async with running(follower) as f_url, aiohttp.ClientSession() as http:
            await _post_pairs(http, f_url, "bad", bad=True)
            await asyncio.sleep(0.3)  # several intervals: the follower itself takes no look
            assert receiver.events == []
            metrics = await (await http.get(f"{f_url}/metrics")).text()
            assert "shadowtee_comparator_verdict{" not in metrics
            async with running(looker):  # the one that looks, saves, and fires the webhook
                await asyncio.wait_for(receiver.arrived.wait(), timeout=20)
            for _ in range(100):  # the follower catches up within a few intervals
                metrics = await (await http.get(f"{f_url}/metrics")).text()
                if 'experiment="bad"} 1.0' in metrics:
                    break
                await asyncio.sleep(0.05)
    assert [e["decision"] for e in receiver.events] == ["REJECT"]
    assert 'shadowtee_comparator_verdict{decision="REJECT",experiment="bad"} 1.0' in metrics
    assert 'shadowtee_comparator_verdict_score{experiment="bad"}' in metrics
