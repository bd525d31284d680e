"""The decision webhook against a real loopback receiver that checks the signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from comparator.judge.decision import Decision, Verdict
from comparator.judge.webhook import (
    SIGNATURE_HEADER,
    WebhookConfig,
    notify_decision,
    post_event,
    sign,
    verify,
)

SECRET = b"s3cret"
SHADOWTEE = str(Path(sys.executable).with_name("shadowtee"))


class Receiver:
    """Fails the first ``fail_first`` requests with ``fail_status``, then accepts signed ones."""

    def __init__(self, fail_first: int = 1, fail_status: int = 503) -> None:
        self.fail_first, self.fail_status = fail_first, fail_status
        self.seen: list[tuple[bool, str, dict]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify(body, SECRET, request.headers.get(SIGNATURE_HEADER))
        self.seen.append((ok, request.headers["X-Shadowtee-Delivery"], json.loads(body)))
        if len(self.seen) <= self.fail_first:
            return web.Response(status=self.fail_status)
        return web.Response(status=200 if ok else 401)


@pytest.fixture
async def serve() -> AsyncIterator:
    runners: list[web.AppRunner] = []

    async def start(receiver: Receiver) -> str:
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}/hook"

    yield start
    for r in runners:
        await r.cleanup()


def _verdict(changed: bool) -> Verdict:
    return Verdict(
        "exp",
        datetime(2026, 11, 2, tzinfo=UTC),
        25.0,
        Decision.PROMOTE,
        97.5,
        ["ok"],
        [],
        "default",
        decision_changed=changed,
    )


def test_signature_is_hmac_sha256_of_the_timestamp_and_the_body() -> None:
    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign(b"{}", b"k", 1_700_000_000) == f"t=1700000000,v1={expected}"
    header = sign(b"{}", b"k")
    assert verify(b"{}", b"k", header)
    assert not verify(b"{}", b"other", header)
    assert not verify(b"{ }", b"k", header)
    assert not verify(b"{}", b"k", None)
    assert not verify(b"{}", b"k", "sha256=" + hmac.new(b"k", b"{}", hashlib.sha256).hexdigest())


def test_a_replayed_or_future_signature_is_refused() -> None:
    header = sign(b"{}", b"k", 1_700_000_000)
    assert verify(b"{}", b"k", header, now=1_700_000_000 + 299)
    assert not verify(b"{}", b"k", header, now=1_700_000_000 + 301)  # replayed 5 min later
    assert not verify(b"{}", b"k", header, now=1_700_000_000 - 301)  # dated in the future
    assert verify(b"{}", b"k", header, now=1_700_000_000 + 3000, tolerance_s=3600)


def test_the_timestamp_cannot_be_moved_without_the_secret() -> None:
    mac = sign(b"{}", b"k", 1_700_000_000).split("v1=")[1]
    assert not verify(b"{}", b"k", f"t=1700009999,v1={mac}", now=1_700_009_999)


@pytest.mark.parametrize(
    "header",
    ["", "t=,v1=ab", "v1=ab", "t=1700000000", "t=1700000000,t=1700000000,v1=ab", "garbage",
     "t=-5,v1=ab", "t=17e8,v1=ab"],
)  # fmt: skip
def test_malformed_signature_headers_are_refused(header: str) -> None:
    assert not verify(b"{}", b"k", header, now=1_700_000_000)


def test_a_rotated_secret_verifies_with_either_value() -> None:
    old, new = sign(b"{}", b"old", 1_700_000_000), sign(b"{}", b"new", 1_700_000_000)
    both = old + ",v1=" + new.split("v1=")[1]
    assert verify(b"{}", b"new", both, now=1_700_000_000)
    assert verify(b"{}", b"old", both, now=1_700_000_000)


def test_an_empty_secret_signs_nothing() -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        WebhookConfig("http://127.0.0.1:9/hook", b"")
    assert not verify(b"{}", b"", sign(b"{}", b""))


@pytest.mark.parametrize("secret", ["", "   "])
def test_the_comparator_refuses_an_empty_webhook_secret_at_start(secret: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWTEE_")}
    env["SHADOWTEE_COMPARATOR__WEBHOOK_SECRET"] = secret
    done = subprocess.run(
        [SHADOWTEE, "comparator", "--listen", "127.0.0.1:0", "--db", "sqlite:///unused.db",
         "--webhook-url", "http://127.0.0.1:9/hook"],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "webhook-secret" in lines[0] and "empty" in lines[0], lines


async def test_decision_change_is_posted_signed_and_retried_after_a_failure(serve) -> None:
    receiver = Receiver(fail_first=1)
    url = await serve(receiver)
    async with aiohttp.ClientSession() as session:
        delivery = await notify_decision(
            session,
            WebhookConfig(url, SECRET, attempts=3, backoff_s=0.01),
            _verdict(True),
            previous="KEEP_OBSERVING",
        )
    assert delivery is not None and delivery.delivered and delivery.attempts == 2
    assert [ok for ok, _, _ in receiver.seen] == [True, True]
    assert len({d for _, d, _ in receiver.seen}) == 1  # same delivery id on the retry
    event = receiver.seen[-1][2]
    assert event["event"] == "decision_changed" and event["decision"] == "PROMOTE"
    assert event["verdict"]["score"] == 97.5


async def test_unchanged_decision_posts_nothing(serve) -> None:
    receiver = Receiver(fail_first=0)
    url = await serve(receiver)
    async with aiohttp.ClientSession() as session:
        assert await notify_decision(session, WebhookConfig(url, SECRET), _verdict(False)) is None
    assert receiver.seen == []


async def test_wrong_secret_is_refused_without_retry(serve) -> None:
    receiver = Receiver(fail_first=0)
    url = await serve(receiver)
    async with aiohttp.ClientSession() as session:
        d = await post_event(
            session, WebhookConfig(url, b"wrong", attempts=4, backoff_s=0.01), {"event": "x"}
        )
    assert not d.delivered and d.status == 401 and d.attempts == 1


async def test_gives_up_after_the_attempts(serve) -> None:
    receiver = Receiver(fail_first=10)
    url = await serve(receiver)
    async with aiohttp.ClientSession() as session:
        d = await post_event(
            session, WebhookConfig(url, SECRET, attempts=3, backoff_s=0.01), {"event": "x"}
        )
    assert not d.delivered and d.attempts == 3 and len(receiver.seen) == 3


async def test_unreachable_receiver_is_a_failed_delivery() -> None:
    async with aiohttp.ClientSession() as session:
        d = await post_event(
            session,
            WebhookConfig("http://127.0.0.1:9/hook", SECRET, attempts=2, backoff_s=0.01),
            {"event": "x"},
        )
    assert not d.delivered and d.status is None


def test_config_rejects_bad_url() -> None:
    with pytest.raises(ValueError, match="webhook url"):
        WebhookConfig("ftp://x", SECRET)
