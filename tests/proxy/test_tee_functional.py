"""The tee on real sockets: isolation from the candidate, shedding, sampling, redaction, pairs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from contract.outcomes import Outcome
from tests.proxy.fakes import (
    FakeCandidate,
    FakeComparator,
    admin_status,
    prod_app,
    running_proxy,
    serve_app,
    wait_for,
)

INFER = "/v2/models/m/infer"


async def test_client_gets_its_answer_while_the_candidate_is_hung(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    candidate = FakeCandidate(mode="hang")
    async with (
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        running_proxy(
            prod=prod, candidate=cand, shadow_timeout_ms=60_000, spool_dir=str(tmp_path)
        ) as proxy,
    ):
        async with client.post(proxy.url + INFER, json={"x": 1}) as resp:
            assert resp.status == 200
            assert resp.headers["X-Model-Version"] == "1"  # production's answer
        await asyncio.wait_for(candidate.entered.wait(), 10)
        assert candidate.active == 1 and not candidate.release.is_set()  # still hung
        status = await admin_status(client, proxy.admin)
        assert status["gauges"]["tee_inflight"] == 1
        candidate.release.set()


async def test_tee_is_shed_past_max_inflight_and_counted(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    candidate, comparator = FakeCandidate(mode="hang"), FakeComparator()
    async with (
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        serve_app(comparator.app()) as comp,
        running_proxy(
            prod=prod,
            candidate=cand,
            comparator=comp,
            max_inflight=2,
            shadow_timeout_ms=60_000,
            spool_dir=str(tmp_path),
        ) as proxy,
    ):
        for i in range(5):
            async with client.post(proxy.url + INFER, json={"i": i}) as resp:
                assert resp.status == 200
        await wait_for(lambda: len(candidate.requests) == 2, "two candidate calls")
        counters = (await admin_status(client, proxy.admin))["counters"]
        assert counters["teed"] == 5
        assert counters["candidate_outcomes"]["shed"] == 3
        assert counters["tee_shed_byte_budget"] == 0
        assert len(candidate.requests) == 2
        # Each shed pair says why (the byte budget and shutdown have their own reasons).
        await wait_for(lambda: len(comparator.pairs) == 3, "the shed pairs shipped")
        assert {p.candidate.error for p in comparator.pairs} == {
            "shed: max_inflight candidate calls in flight"
        }
        candidate.release.set()


async def test_every_teed_request_is_accounted_for(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    candidate = FakeCandidate(mode="ok")
    comparator = FakeComparator()
    async with (
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        serve_app(comparator.app()) as comp,
        running_proxy(
            prod=prod, candidate=cand, comparator=comp, max_inflight=4, spool_dir=str(tmp_path)
        ) as proxy,
    ):

        async def one(i: int) -> None:
            async with client.post(proxy.url + INFER, json={"i": i}) as resp:
                assert resp.status == 200

        await asyncio.gather(*(one(i) for i in range(40)))
        await wait_for(lambda: len(comparator.pairs) == 40, "40 pairs")
        counters = (await admin_status(client, proxy.admin))["counters"]
        outcomes = counters["candidate_outcomes"]
        assert (
            outcomes["ok"] + outcomes["error"] + outcomes["timeout"] + outcomes["shed"]
            == counters["teed"]
            == 40
        )
        by_outcome = {o: sum(p.candidate.outcome is o for p in comparator.pairs) for o in Outcome}
        assert by_outcome[Outcome.OK] == outcomes["ok"]
        assert by_outcome[Outcome.SHED] == outcomes["shed"]
        ok = next(p for p in comparator.pairs if p.candidate.outcome is Outcome.OK)
        assert (
            ok.prod.status == 200
            and ok.prod.model_version == "1"
            and ok.candidate.model_version == "2"
        )
        assert ok.prod.body is not None and ok.candidate.body is not None
        assert ok.prod.body["outputs"][0]["data"] == ok.candidate.body["outputs"][0]["data"]


@pytest.mark.parametrize(
    ("mode", "expected", "timeout_ms"),
    [
        ("hang", Outcome.TIMEOUT, 100),
        ("error500", Outcome.OK, 5_000),  # an HTTP answer: judged from its status
        ("garbage", Outcome.OK, 5_000),
    ],
)
async def test_candidate_failures_become_pair_data(
    tmp_path: Path, client: aiohttp.ClientSession, mode: str, expected: Outcome, timeout_ms: int
) -> None:
    candidate = FakeCandidate(mode=mode)
    comparator = FakeComparator()
    async with (
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        serve_app(comparator.app()) as comp,
        running_proxy(
            prod=prod,
            candidate=cand,
            comparator=comp,
            shadow_timeout_ms=timeout_ms,
            spool_dir=str(tmp_path),
        ) as proxy,
    ):
        async with client.post(proxy.url + INFER, json={"x": 1}) as resp:
            assert resp.status == 200
        await asyncio.wait_for(comparator.received.wait(), 10)
        candidate.release.set()
    (pair,) = comparator.pairs
    assert pair.candidate.outcome is expected
    if mode == "hang":
        assert pair.candidate.latency_ms == timeout_ms  # right-censored at the deadline
    if mode == "error500":
        assert pair.candidate.status == 500 and pair.candidate.is_error
    if mode == "garbage":
        assert pair.candidate.body is None and pair.candidate.body_bytes == 10


async def test_unreachable_candidate_is_an_error_outcome(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    comparator = FakeComparator()
    async with (
        serve_app(prod_app()) as prod,
        serve_app(comparator.app()) as comp,
        running_proxy(
            prod=prod, candidate="http://127.0.0.1:9", comparator=comp, spool_dir=str(tmp_path)
        ) as proxy,
    ):
        async with client.post(proxy.url + INFER, json={"x": 1}) as resp:
            assert resp.status == 200
        await asyncio.wait_for(comparator.received.wait(), 10)
    (pair,) = comparator.pairs
    assert pair.candidate.outcome is Outcome.ERROR and "connect" in (pair.candidate.error or "")


async def test_secret_headers_never_reach_the_candidate_or_a_pair(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    secret = "s3cr3t-value-42"
    candidate = FakeCandidate()
    comparator = FakeComparator()
    app = prod_app()
    async with (
        serve_app(app) as prod,
        serve_app(candidate.app()) as cand,
        serve_app(comparator.app()) as comp,
        running_proxy(
            prod=prod,
            candidate=cand,
            comparator=comp,
            include_request_body=True,
            spool_dir=str(tmp_path),
        ) as proxy,
    ):
        headers = {
            "Authorization": f"Bearer {secret}",
            "Cookie": f"s={secret}",
            "X-Api-Key": secret,
            "X-Keep": "1",
        }
        async with client.post(proxy.url + INFER, json={"x": 1}, headers=headers) as resp:
            assert resp.status == 200
        await asyncio.wait_for(comparator.received.wait(), 10)
    from tests.proxy.fakes import SEEN

    assert app[SEEN][-1]["headers"]["Authorization"] == f"Bearer {secret}"  # production gets it
    (seen,) = candidate.requests
    assert seen["headers"]["X-Shadow"] == "1" and seen["headers"]["X-Keep"] == "1"
    assert secret not in repr(seen["headers"])
    assert comparator.pairs[0].request.body == {"x": 1}
    assert all(secret.encode() not in raw for raw in comparator.raw)


async def test_sampling_is_deterministic_by_key(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    picked: list[set[str]] = []
    for run in range(2):
        candidate = FakeCandidate()
        async with (
            serve_app(prod_app()) as prod,
            serve_app(candidate.app()) as cand,
            running_proxy(
                prod=prod,
                candidate=cand,
                sample_rate=0.5,
                sample_key="X-User",
                spool_dir=str(tmp_path / str(run)),
            ) as proxy,
        ):
            for i in range(60):
                async with client.post(
                    proxy.url + INFER, json={"user": f"u{i}"}, headers={"X-User": f"u{i}"}
                ) as resp:
                    assert resp.status == 200
            counters = (await admin_status(client, proxy.admin))["counters"]
            teed = counters["teed"]
            await wait_for(lambda c=candidate, n=teed: len(c.requests) == n, "tee calls")
            picked.append({r["headers"]["X-User"] for r in candidate.requests})
    assert picked[0] == picked[1]
    assert 10 < len(picked[0]) < 50  # a sample, not all or nothing


async def test_large_body_is_forwarded_not_teed_and_counted(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    candidate = FakeCandidate()
    async with (
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        running_proxy(
            prod=prod, candidate=cand, max_tee_body_bytes=1000, spool_dir=str(tmp_path)
        ) as proxy,
    ):
        async with client.post(proxy.url + INFER, data=b"x" * 5000) as resp:
            assert (await resp.json())["outputs"][0]["data"] == [5000]
        async with client.post(proxy.url + INFER, data=b"x" * 10) as resp:
            assert resp.status == 200
        await wait_for(lambda: len(candidate.requests) == 1, "the small request's tee")
        counters = (await admin_status(client, proxy.admin))["counters"]
        assert counters["skipped_body_too_large"] == 1
        assert counters["candidate_outcomes"]["skipped"] == 1
        assert candidate.requests[0]["body"] == b"x" * 10


async def test_only_configured_routes_and_methods_are_teed(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    candidate = FakeCandidate()
    async with (
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        running_proxy(prod=prod, candidate=cand, spool_dir=str(tmp_path)) as proxy,
    ):
        for method, path in [("GET", "/echo"), ("POST", "/echo"), ("PUT", "/echo")]:
            async with client.request(method, proxy.url + path, data=b"{}") as resp:
                assert resp.status == 200
        async with client.post(proxy.url + INFER + "?q=1", data=b"{}") as resp:
            assert resp.status == 200
        await wait_for(lambda: len(candidate.requests) == 1, "one tee")
        assert candidate.requests[0]["path"] == INFER + "?q=1"
        assert (await admin_status(client, proxy.admin))["counters"]["teed"] == 1


async def test_a_client_request_id_is_kept_even_while_another_is_pending(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    """Each pair is keyed by the client's id and a nonce (proxy.app DataPort._pair_key), so a
    second request with a pending id keeps its id and still gets its own pair."""
    candidate = FakeCandidate(mode="hang")
    async with (
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        running_proxy(
            prod=prod, candidate=cand, shadow_timeout_ms=60_000, spool_dir=str(tmp_path)
        ) as proxy,
    ):
        ids = []
        for _ in range(2):
            headers = {"X-Shadow-Request-Id": "client-42"}
            async with client.post(proxy.url + INFER, json={}, headers=headers) as resp:
                ids.append(resp.headers["X-Shadow-Request-Id"])
        assert ids == ["client-42", "client-42"]
        await wait_for(lambda: len(candidate.requests) == 2, "both requests teed")
        status = await admin_status(client, proxy.admin)
        assert status["gauges"]["pairing_buffer_pairs"] == 2
        candidate.release.set()


async def test_nothing_is_retained_after_a_hung_candidate_times_out(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    candidate = FakeCandidate(mode="hang")
    async with (
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        running_proxy(
            prod=prod,
            candidate=cand,
            shadow_timeout_ms=20,
            candidate_linger_ms=50,
            max_inflight=8,
            spool_dir=str(tmp_path),
        ) as proxy,
    ):
        for i in range(30):
            async with client.post(proxy.url + INFER, json={"i": i}) as resp:
                assert resp.status == 200
        gauges: dict[str, int] = {}
        for _ in range(500):  # bounded wait for deadlines, eviction and linger aborts
            status = await admin_status(client, proxy.admin)
            gauges = status["gauges"]
            if gauges["tee_inflight"] == 0 and gauges["pairing_buffer_pairs"] == 0:
                break
            await asyncio.sleep(0.01)
        assert gauges["tee_inflight"] == 0 and gauges["pairing_buffer_pairs"] == 0
        outcomes = status["counters"]["candidate_outcomes"]
        assert outcomes["timeout"] + outcomes["shed"] == status["counters"]["teed"] == 30
        candidate.release.set()


async def test_each_call_gets_its_own_deadline_whatever_finished_around_it(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    candidate = FakeCandidate(mode="ok")
    comparator = FakeComparator()
    async with (
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        serve_app(comparator.app()) as comp,
        running_proxy(
            prod=prod,
            candidate=cand,
            comparator=comp,
            shadow_timeout_ms=150,
            spool_dir=str(tmp_path),
        ) as proxy,
    ):
        # Answered, then hung, then answered: the hung call times out between two that did not.
        for i, mode in enumerate(("ok", "hang", "ok")):
            candidate.mode = mode
            async with client.post(proxy.url + INFER, json={"i": i}) as resp:
                assert resp.status == 200
            await wait_for(lambda n=i + 1: len(candidate.requests) == n, "the candidate call")
        await wait_for(lambda: len(comparator.pairs) == 3, "3 pairs")
        by_body = {p.request.sha256: p.candidate.outcome for p in comparator.pairs}
        assert sorted(o.value for o in by_body.values()) == ["ok", "ok", "timeout"]
        status = await admin_status(client, proxy.admin)
        assert status["counters"]["candidate_outcomes"]["timeout"] == 1
        hung = next(p for p in comparator.pairs if p.candidate.outcome is Outcome.TIMEOUT)
        assert hung.candidate.latency_ms == 150.0 and hung.prod.status == 200
        candidate.release.set()


@pytest.mark.parametrize("mode", ["ok", "hang"])
async def test_the_tee_holds_at_most_its_bytes_of_request_bodies(
    mode: str, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    """Past ``max_tee_bytes`` of request bodies held by live calls, a tee is shed and counted
    (a small body still fits); the bytes come back when calls are answered or time out."""
    candidate = FakeCandidate(mode=mode)
    body = b'{"pad": "' + b"x" * (600 * 1024) + b'"}'
    async with (
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        running_proxy(
            prod=prod,
            candidate=cand,
            shadow_timeout_ms=60_000 if mode == "hang" else 2_000,
            max_tee_bytes=4 * 1024 * 1024,
            max_tee_body_bytes=1024 * 1024,
            spool_dir=str(tmp_path),
        ) as proxy,
    ):
        answers = []
        for _ in range(5):
            async with client.post(proxy.url + INFER, data=body) as resp:
                assert resp.status == 200
                answers.append(len(await resp.read()))
        status = await admin_status(client, proxy.admin)
        if mode == "hang":
            # Three 600 KiB bodies, each held twice (its call and its pair), fit under 4 MiB;
            # the fourth and fifth are shed. Production's answers wait in the three pairs for
            # the candidate: they are counted too.
            assert status["counters"]["candidate_outcomes"]["shed"] == 2
            assert status["counters"]["tee_shed_byte_budget"] == 2
            assert status["gauges"]["tee_held_bytes"] == 2 * 3 * len(body) + sum(answers[:3])
            async with client.post(proxy.url + INFER, json={"small": 1}) as resp:
                assert resp.status == 200
            await wait_for(lambda: len(candidate.requests) == 4, "the small body teed")
            candidate.release.set()
        for _ in range(500):  # bounded: until every call has finished
            status = await admin_status(client, proxy.admin)
            if status["gauges"]["tee_inflight"] == 0:
                break
            await asyncio.sleep(0.02)
        assert status["gauges"]["tee_inflight"] == 0
        assert status["gauges"]["tee_held_bytes"] == 0


# A budget that holds two 700 KiB answers and not three (each pair's own bodies are small), with
# a deadline no test reaches.
_TWO_ANSWERS: dict[str, Any] = {
    "shadow_timeout_ms": 60_000,
    "max_tee_bytes": 1536 * 1024,
    "max_tee_body_bytes": 1024,
    "max_pair_body_bytes": 720 * 1024,
}


def _sized_answers(
    size: int,
    release: asyncio.Event | None = None,
    status: int = 200,
    *,
    late: bool = False,
    written: list[int] | None = None,
) -> web.Application:
    """A model answering ``size`` bytes of JSON. With ``release``: it sends all but the last
    64 KiB at once and the rest when released (an answer that arrives slowly), or with ``late``
    its whole answer only when released (a slow model). ``written`` gets the size of each first
    part once it is written."""
    answer = b'{"outputs": [{"name": "y", "data": "' + b"x" * (size - 40) + b'"}]}'
    cut = len(answer) - 64 * 1024 if release is not None and not late else len(answer)

    async def infer(request: web.Request) -> web.StreamResponse:
        await request.read()
        if late and release is not None:
            await release.wait()
        resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        resp.content_length = len(answer)
        await resp.prepare(request)
        await resp.write(answer[:cut])
        if written is not None:
            written.append(cut)
        if cut < len(answer) and release is not None:
            await release.wait()
            await resp.write(answer[cut:])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post(INFER, infer)
    return app


async def test_production_answers_waiting_for_the_candidate_count_against_the_tees_bytes(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    """Production's answer waits in its pair until the candidate's side is in; the tee counts
    it against ``max_tee_bytes``. Past it the call is given up as shed (its pair shipped at once,
    production's answer whole, the candidate's side shed — never an invalid output), counted in
    ``tee_shed_byte_budget``, and not a failure the breaker counts."""
    candidate, comparator = FakeCandidate(mode="hang"), FakeComparator()
    size = 700 * 1024
    async with (
        serve_app(_sized_answers(size)) as prod,
        serve_app(candidate.app()) as cand,
        serve_app(comparator.app()) as comp,
        running_proxy(
            prod=prod,
            candidate=cand,
            comparator=comp,
            shadow_timeout_ms=60_000,
            max_tee_bytes=2 * 1024 * 1024,
            max_tee_body_bytes=64 * 1024,
            max_pair_body_bytes=768 * 1024,
            breaker=True,
            breaker_min_calls=1,
            breaker_window_s=2.0,  # the breaker looks every 0.2 s
            spool_dir=str(tmp_path),
        ) as proxy,
    ):
        await asyncio.sleep(0.5)  # the breaker's first looks, its baseline
        for i in range(4):
            async with client.post(proxy.url + INFER, json={"i": i}) as resp:
                assert resp.status == 200 and len(await resp.read()) == size
        # Two answers fit under 2 MiB; the third and fourth give their calls up.
        await wait_for(lambda: len(comparator.pairs) == 2, "the two shed pairs shipped")
        for pair in comparator.pairs:
            assert pair.candidate.outcome is Outcome.SHED, pair.candidate
            assert "max_tee_bytes" in (pair.candidate.error or "")
            assert pair.prod.outcome is Outcome.OK and pair.prod.body is not None
        status = await admin_status(client, proxy.admin)
        assert status["counters"]["tee_shed_byte_budget"] == 2
        assert status["counters"]["candidate_outcomes"]["shed"] == 2
        assert status["gauges"]["tee_held_bytes"] == 2 * size + 2 * 2 * len(
            b'{"i": 0}'
        )  # aiohttp's json=
        await asyncio.sleep(0.6)  # the breaker looks: shed calls are not failures
        tee = (await admin_status(client, proxy.admin))["tee"]
        assert not tee["paused"] and tee["breaker"]["state"] == "closed", tee
        candidate.release.set()
        await wait_for(lambda: len(comparator.pairs) == 4, "every pair shipped")
        outcomes = sorted(p.candidate.outcome.value for p in comparator.pairs)
        assert outcomes == ["ok", "ok", "shed", "shed"]
        status = await admin_status(client, proxy.admin)
        assert status["gauges"]["tee_held_bytes"] == 0


@pytest.mark.parametrize("status", [200, 500])
async def test_a_candidate_answer_past_the_tees_bytes_is_shed_not_an_invalid_output(
    status: int, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    """Three candidate answers of 700 KiB arrive slowly, at once (636 KiB, then the rest when
    released): two fit under ``max_tee_bytes``; the third would pass it, so it reads
    its answer to the end but holds none of it and ends as shed. The pair never carries a body
    cut to its size, which the comparator would count as the candidate's invalid output. A 5xx
    is judged by its status alone: it stays the failure it is, its body not kept."""
    release, comparator, written = asyncio.Event(), FakeComparator(), []
    async with (
        serve_app(prod_app()) as prod,
        serve_app(_sized_answers(700 * 1024, release, status, written=written)) as cand,
        serve_app(comparator.app()) as comp,
        running_proxy(
            prod=prod,
            candidate=cand,
            comparator=comp,
            spool_dir=str(tmp_path),
            **_TWO_ANSWERS,
        ) as proxy,
    ):
        for i in range(3):
            async with client.post(proxy.url + INFER, json={"i": i}) as resp:
                assert resp.status == 200
        await wait_for(lambda: len(written) == 3, "the first 636 KiB of every answer sent")
        await asyncio.sleep(0.3)  # and read by the proxy
        held = (await admin_status(client, proxy.admin))["gauges"]["tee_held_bytes"]
        # Two answers' first parts held (with their pairs' small bodies), the third's dropped.
        assert 2 * 636 * 1024 < held < 2 * 637 * 1024, held
        release.set()
        await wait_for(lambda: len(comparator.pairs) == 3, "every pair shipped")
        sides = sorted((p.candidate for p in comparator.pairs), key=lambda c: c.body is None)
        if status == 500:
            assert [c.outcome for c in sides] == [Outcome.OK] * 3
            assert [c.status for c in sides] == [500] * 3
            assert sides[2].body is None and sides[2].body_bytes == 700 * 1024
        else:
            assert [c.outcome for c in sides] == [Outcome.OK, Outcome.OK, Outcome.SHED]
            assert sides[0].body is not None and sides[1].body is not None
            assert sides[2].body is None and sides[2].body_bytes is None
            assert "max_tee_bytes" in (sides[2].error or "")
        doc = await admin_status(client, proxy.admin)
        assert doc["counters"]["tee_shed_byte_budget"] == (1 if status == 200 else 0)
        assert doc["gauges"]["tee_held_bytes"] == 0


async def test_an_answer_past_max_pair_body_bytes_leaves_the_tees_bytes(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    """A candidate answer over ``max_pair_body_bytes`` is read but not kept past that size: what
    the call held of it leaves the tee's byte count at once, not when the call ends, so slow
    large answers cannot fill the budget with bytes nobody holds and shed every other call."""
    release, written = asyncio.Event(), []
    async with (
        serve_app(prod_app()) as prod,
        serve_app(_sized_answers(1536 * 1024, release, written=written)) as cand,
        running_proxy(
            prod=prod,
            candidate=cand,
            shadow_timeout_ms=60_000,
            spool_dir=str(tmp_path),
        ) as proxy,
    ):
        async with client.post(proxy.url + INFER, json={"i": 0}) as resp:
            assert resp.status == 200
        await wait_for(lambda: written == [1536 * 1024 - 64 * 1024], "the answer but 64 KiB sent")
        await asyncio.sleep(0.3)  # and read by the proxy
        doc = await admin_status(client, proxy.admin)
        assert doc["gauges"]["tee_inflight"] == 1
        assert doc["gauges"]["tee_held_bytes"] < 1024, doc["gauges"]  # its pair's small bodies
        release.set()
        for _ in range(200):  # bounded: until the call has finished
            doc = await admin_status(client, proxy.admin)
            if doc["gauges"]["tee_inflight"] == 0:
                break
            await asyncio.sleep(0.02)
        assert doc["gauges"]["tee_inflight"] == doc["gauges"]["tee_held_bytes"] == 0
        assert doc["counters"]["candidate_outcomes"]["ok"] == 1


async def test_candidate_answers_waiting_for_production_count_against_the_tees_bytes(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    """The candidate answers 700 KiB at once; production answers only when released. Each
    candidate answer waits in its pair for production's: counted against ``max_tee_bytes`` until
    the pair leaves; past it the pair keeps the candidate's side as shed (its answer dropped)."""
    release, comparator = asyncio.Event(), FakeComparator()
    async with (
        serve_app(_sized_answers(100, release, late=True)) as prod,
        serve_app(_sized_answers(700 * 1024)) as cand,
        serve_app(comparator.app()) as comp,
        running_proxy(
            prod=prod,
            candidate=cand,
            comparator=comp,
            spool_dir=str(tmp_path),
            **_TWO_ANSWERS,
        ) as proxy,
    ):

        async def send(i: int) -> int:
            async with client.post(proxy.url + INFER, json={"i": i}) as resp:
                await resp.read()
                return resp.status

        sends = [asyncio.create_task(send(i)) for i in range(3)]

        for _ in range(500):  # bounded: until every candidate call has answered
            doc: dict[str, Any] = await admin_status(client, proxy.admin)
            gauges = doc["gauges"]
            if doc["counters"]["teed"] == 3 and gauges["tee_inflight"] == 0:
                break
            await asyncio.sleep(0.02)
        assert gauges["tee_inflight"] == 0 and gauges["pairing_buffer_pairs"] == 3, gauges
        # Two answers wait in their pairs, counted; the third did not fit.
        assert 2 * 700 * 1024 <= gauges["tee_held_bytes"] <= 1536 * 1024, gauges
        release.set()
        assert await asyncio.gather(*sends) == [200, 200, 200]
        await wait_for(lambda: len(comparator.pairs) == 3, "every pair shipped")
        outcomes = sorted(p.candidate.outcome.value for p in comparator.pairs)
        assert outcomes == ["ok", "ok", "shed"]
        doc = await admin_status(client, proxy.admin)
        assert doc["counters"]["tee_shed_byte_budget"] == 1
        assert doc["gauges"]["tee_held_bytes"] == 0
