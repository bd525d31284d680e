"""The shipper against a real comparator on 127.0.0.1 that misbehaves on purpose: a body limit it
announces (or not), batches it refuses for good, a batch that fails while the others go through.

After every test the accounting balances exactly: emitted == delivered + dropped + queued + being
shipped + spooled (:func:`balanced`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from comparator.wire import PairBatch
from contract.outcomes import Outcome
from proxy import shipper as shipper_module
from proxy import spool as spool_module
from proxy.metrics import ProxyStats
from proxy.pairing import CompletedPair, Side
from proxy.shipper import MIN_BATCH_BYTES, Shipper
from proxy.spool import Spool
from tests.proxy.fakes import free_port, serve_app


@dataclass
class Comparator:
    """``POST /v1/pairs``: 413 past ``limit`` (announced in ``X-Max-Body-Bytes`` if ``announce``),
    else ``verdict(request ids)`` — a status, 200 by default — and records what it took."""

    limit: int = 64 * 1024 * 1024
    announce: bool = True
    verdict: Callable[[list[str]], int] = lambda ids: 200
    bodies: list[int] = field(default_factory=list)
    taken: list[Any] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    limit_text: str | None = None  # what X-Max-Body-Bytes says, when not str(limit)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=128 * 1024 * 1024)
        app.router.add_post("/v1/pairs", self._ingest)
        return app

    async def _ingest(self, request: web.Request) -> web.Response:
        body = await request.read()
        said = self.limit_text if self.limit_text is not None else str(self.limit)
        headers = {"X-Max-Body-Bytes": said} if self.announce else {}
        if len(body) > self.limit:
            self.answers.append(413)
            return web.json_response({"error": "too large"}, status=413, headers=headers)
        pairs = PairBatch.model_validate_json(body).pairs
        status = self.verdict([p.request_id for p in pairs])
        self.answers.append(status)
        if status == 200:
            self.bodies.append(len(body))
            self.taken.extend(pairs)
        return web.json_response({"status": status}, status=status, headers=headers)

    @property
    def ids(self) -> list[str]:
        return [p.request_id for p in self.taken]


def pair(i: int, body_bytes: int = 100, rid: str | None = None) -> CompletedPair:
    body = json.dumps({"outputs": [i], "pad": "x" * body_bytes}).encode()
    return CompletedPair(
        request_id=rid or f"r{i:04d}",
        ts=1_790_000_000.0 + i,
        route="/v2/models/m/infer",
        request_sha256="0" * 64,
        request_body=None,
        prod=Side(Outcome.OK, status=200, latency_ms=1.0, model_version="1", body=body),
        candidate=Side(Outcome.OK, status=200, latency_ms=2.0, model_version="2", body=body),
    )


@contextlib.asynccontextmanager
async def shipper(url: str, tmp_path: Path, **kw: Any) -> AsyncIterator[Shipper]:
    settings: dict[str, Any] = {
        "batch_size": 500,
        "flush_interval_s": 60.0,
        "timeout_s": 5.0,
        "retries": 0,
        "backoff_s": 0.0,
        "max_queue": 10_000,
        "max_body_bytes": 1024 * 1024,
    } | kw
    async with aiohttp.ClientSession() as session:
        yield Shipper(
            session=session,
            comparator_url=url,
            token=None,
            experiment="e",
            spool=Spool(tmp_path / "spool", 64 * 1024 * 1024),
            stats=ProxyStats(),
            **settings,
        )


def balanced(s: Shipper) -> dict[str, Any]:
    stats: ProxyStats = s._stats
    acc = stats.accounting(buffer=0, queue=s.queued, spool=s.spool.pairs)
    # Pairs enter the shipper by enqueue: emitted is its "teed".
    out = stats.pairs_delivered + stats.pairs_replayed + sum(stats.dropped.values())
    assert stats.pairs_emitted == out + s.queued + s.shipping + s.spool.pairs, acc
    assert s.shipping == 0
    return acc


async def test_batches_are_cut_below_the_limit_the_comparator_announces(tmp_path: Path) -> None:
    comp = Comparator(limit=100 * 1024)
    async with serve_app(comp.app()) as url, shipper(url, tmp_path) as s:
        for i in range(60):
            s.enqueue(pair(i, 5_000))  # ~10 KB a pair: ~600 KB in all, one batch by count
        await s.ship_pending(retries=0)
        balanced(s)
        # The first batch met the limit (413), was sent in halves, and the limit was learnt.
        assert comp.answers[0] == 413 and s.batch_limit <= 100 * 1024
        for i in range(60, 120):
            s.enqueue(pair(i, 5_000))
        before = len(comp.answers)
        await s.ship_pending(retries=0)
        assert 413 not in comp.answers[before:]  # cut below it from then on
    assert sorted(comp.ids) == [f"r{i:04d}" for i in range(120)]
    assert max(comp.bodies) <= 100 * 1024
    assert s._stats.pairs_delivered == 120 and sum(s._stats.dropped.values()) == 0


@pytest.mark.parametrize("said", ["9" * 4301, "1" + "0" * 40, "\u00b2", "-5", ""])
async def test_a_limit_header_that_is_no_number_leaves_a_delivered_batch_delivered(
    said: str, tmp_path: Path
) -> None:
    """A comparator that stores a batch and answers 200 with an ``X-Max-Body-Bytes`` no one can
    use (4,301 digits, which ``int()`` refuses; absurdly large; not ASCII digits): the batch is
    delivered, once, and the next one goes out. (The 4,301 digits once raised on the 200, the
    batch went to the spool and was sent again on every pass while the rest waited behind it.)"""
    comp = Comparator(limit_text=said)
    async with serve_app(comp.app()) as url, shipper(url, tmp_path, batch_size=10) as s:
        for i in range(20):
            s.enqueue(pair(i))
        await s.ship_pending(retries=0)
        await s.ship_pending(retries=0)
        balanced(s)
    assert sorted(comp.ids) == [f"r{i:04d}" for i in range(20)]  # each once
    assert s._stats.pairs_delivered == 20 and s.spool.pairs == 0


async def test_a_413_without_a_header_halves_the_batch_until_it_fits(tmp_path: Path) -> None:
    comp = Comparator(limit=80 * 1024, announce=False)
    async with serve_app(comp.app()) as url, shipper(url, tmp_path) as s:
        for i in range(40):
            s.enqueue(pair(i, 5_000))
        await s.ship_pending(retries=0)
        balanced(s)
    assert sorted(comp.ids) == [f"r{i:04d}" for i in range(40)]
    assert MIN_BATCH_BYTES <= s.batch_limit <= 80 * 1024


async def test_a_pair_alone_over_the_limit_travels_with_its_bodies_reduced(tmp_path: Path) -> None:
    comp = Comparator(limit=MIN_BATCH_BYTES + 8192)
    async with serve_app(comp.app()) as url, shipper(url, tmp_path) as s:
        s.enqueue(pair(0, 50))
        s.enqueue(pair(1, 200_000))  # 400 KB of bodies, under max_pair_body_bytes
        s.enqueue(pair(2, 50))
        await s.ship_pending(retries=0)
        await s.ship_pending(retries=0)  # the first batch taught the limit
        balanced(s)
    big = {p.request_id: p for p in comp.taken}["r0001"]
    assert big.prod.body is None and big.prod.body_bytes is not None
    assert big.prod.body_bytes > 200_000 and big.candidate.body is None
    assert sorted(comp.ids) == ["r0000", "r0001", "r0002"]


async def test_a_small_pair_a_comparator_refuses_alone_travels_with_its_bodies_reduced(
    tmp_path: Path,
) -> None:
    """A pair under every batch limit that a comparator still refuses alone (413, its limit
    below the smallest one the shipper uses) is encoded again with no body room: the same pair
    arrives, bodies as sizes."""
    comp = Comparator(limit=2048, announce=False)
    async with serve_app(comp.app()) as url, shipper(url, tmp_path) as s:
        s.enqueue(pair(0, 1_500))  # about 3.5 KB on the wire: under the smallest batch limit
        await s.ship_pending(retries=0)
        acc = balanced(s)
    assert acc["dropped"] == 0 and comp.ids == ["r0000"]
    (got,) = comp.taken
    assert got.prod.body is None and got.candidate.body is None
    assert got.prod.body_bytes is not None and got.prod.body_bytes >= 1_500
    assert comp.answers.count(413) == 1


async def test_a_pair_that_cannot_be_encoded_is_counted_and_the_others_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pairs are encoded as their batch is made: one whose encoding fails (a bug) is counted as
    dropped (``encode_error``) and stops nothing — the pairs before and after it arrive."""
    real = shipper_module.encode_pair

    def encode(pair: CompletedPair, **kw: Any) -> bytes:
        if pair.request_id == "r0003":
            raise RuntimeError("an encoder bug")
        return real(pair, **kw)

    monkeypatch.setattr(shipper_module, "encode_pair", encode)
    comp = Comparator()
    async with serve_app(comp.app()) as url, shipper(url, tmp_path) as s:
        for i in range(8):
            s.enqueue(pair(i))
        await s.ship_pending(retries=0)
        acc = balanced(s)
    assert acc["dropped_by_reason"] == {"encode_error": 1}
    assert sorted(comp.ids) == [f"r{i:04d}" for i in range(8) if i != 3]


async def test_a_batch_is_encoded_a_slice_per_turn_of_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hundreds of pairs completing in one turn (a hung candidate's calls timing out together)
    cost that turn nothing but a queue append: the shipping pass encodes them, a slice per turn,
    so the loop runs other callbacks in between; all arrive."""
    real = shipper_module.encode_pair
    encoded: list[str] = []

    def encode(pair: CompletedPair, **kw: Any) -> bytes:
        encoded.append(pair.request_id)
        return real(pair, **kw)

    monkeypatch.setattr(shipper_module, "encode_pair", encode)
    comp = Comparator()
    seen: list[int] = []
    ticking = True

    def tick() -> None:  # another callback on the loop: records progress every turn
        seen.append(len(encoded))
        if ticking:
            asyncio.get_running_loop().call_soon(tick)

    async with serve_app(comp.app()) as url, shipper(url, tmp_path, batch_size=1000) as s:
        for i in range(200):
            s.enqueue(pair(i))
        assert not encoded and s.queued == 200  # nothing encoded inside the turn that emitted
        asyncio.get_running_loop().call_soon(tick)
        await s.ship_pending(retries=0)
        ticking = False
        balanced(s)
    assert sorted(comp.ids) == [f"r{i:04d}" for i in range(200)]
    assert len(encoded) == 200
    steps = [b - a for a, b in itertools.pairwise(seen) if b > a]
    assert len(steps) >= 200 // shipper_module._ENCODE_SLICE
    assert max(steps) <= shipper_module._ENCODE_SLICE


_ODD_BODIES = {
    # request body, production's, the candidate's: each pair about 2-5 KB on the wire
    "a binary request": (b"{" + bytes(range(256)) * 12, b'{"y":[1]}', b'{"y":[1]}'),
    # a 4,000-digit integer: embedded (the batch parser takes up to 4,300), reduced unparsed
    "a long integer": (None, b"[" + b"7" * 4000 + b"]", b"{}"),
    "whitespace around a body": (None, b'{"n":"' + "é".encode() * 300 + b'"}\n', b"null "),
}


@pytest.mark.parametrize("kind", sorted(_ODD_BODIES))
async def test_a_small_pair_refused_alone_is_reduced_to_its_exact_body_sizes(
    kind: str, tmp_path: Path
) -> None:
    """Encoded again from the pair with no body room: no body is parsed, every body goes, and
    the sizes are the received ones."""
    request, prod, cand = _ODD_BODIES[kind]
    small = CompletedPair(
        request_id="r0000",
        ts=1_790_000_000.0,
        route="/v2/models/m/infer",
        request_sha256="0" * 64,
        request_body=request,
        prod=Side(Outcome.OK, status=200, latency_ms=1.0, body=prod),
        candidate=Side(Outcome.OK, status=200, latency_ms=2.0, body=cand),
    )
    comp = Comparator(limit=512, announce=False)  # under every pair here, over each reduced
    async with serve_app(comp.app()) as url, shipper(url, tmp_path) as s:
        s.enqueue(small)
        await s.ship_pending(retries=0)
        acc = balanced(s)
    assert acc["dropped"] == 0 and comp.ids == ["r0000"], comp.answers
    (got,) = comp.taken
    assert got.request.body is None and got.request.binary is None
    assert (got.prod.body, got.candidate.body) == (None, None)
    assert (got.prod.body_bytes, got.candidate.body_bytes) == (len(prod), len(cand))


async def test_a_spooled_batch_too_large_for_the_comparator_is_spooled_again_in_halves(
    tmp_path: Path,
) -> None:
    """Spooled while the comparator was away, then found over its limit: split, never dropped;
    a lone pair over it is spooled again with its bodies reduced to their sizes."""
    comp = Comparator(limit=MIN_BATCH_BYTES + 4096, announce=False)
    port = free_port()
    async with shipper(f"http://127.0.0.1:{port}", tmp_path, batch_size=8) as s:
        for i in range(8):
            s.enqueue(pair(i, 3_000 if i != 5 else 40_000))
        await s.ship_pending(retries=0)
        assert (len(s.spool), s.spool.pairs) == (1, 8)
        async with serve_app(comp.app(), port=port):
            for _ in range(10):  # bounded: each pass splits what is too large once more
                await s.ship_pending(retries=0)
                if not len(s.spool):
                    break
        acc = balanced(s)
    assert acc["dropped"] == 0 and s._stats.pairs_replayed == 8
    assert sorted(comp.ids) == [f"r{i:04d}" for i in range(8)]
    big = {p.request_id: p for p in comp.taken}["r0005"]
    assert big.prod.body is None and big.prod.body_bytes is not None


async def test_a_batch_refused_for_good_is_set_aside_and_the_next_go_on(tmp_path: Path) -> None:
    comp = Comparator(verdict=lambda ids: 400 if "bad" in ids else 200)
    async with serve_app(comp.app()) as url, shipper(url, tmp_path, batch_size=5) as s:
        for i in range(15):
            s.enqueue(pair(i, rid="bad" if i == 7 else None))
        await s.ship_pending(retries=2)
        acc = balanced(s)
    assert acc["dropped_by_reason"] == {"rejected": 5}
    assert len(comp.ids) == 10 and "bad" not in comp.ids
    kept = list((tmp_path / "spool" / "rejected").iterdir())
    assert len(kept) == 1 and kept[0].name.endswith("-5.json")
    assert b'"request_id":"bad"' in kept[0].read_bytes()
    assert comp.answers.count(400) == 1  # never retried


async def test_a_spooled_batch_that_fails_while_others_go_through_is_set_aside(
    tmp_path: Path,
) -> None:
    """A 503 for one batch only (as PostgreSQL gave for a NUL before the quarantine): after
    ``poison_after`` strikes it is set aside and the spool drains."""
    comp = Comparator(verdict=lambda ids: 503 if "poison" in ids else 200)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with shipper(url, tmp_path, batch_size=4, poison_after=3) as s:
        for i in range(24):
            s.enqueue(pair(i, rid="poison" if i == 1 else None))
        await s.ship_pending(retries=0)  # the comparator is away: six batches spooled
        assert (len(s.spool), s._stats.pairs_spooled) == (6, 24)
        balanced(s)
        async with serve_app(comp.app(), port=port):
            await s.ship_pending(retries=0)
        acc = balanced(s)
    assert acc["dropped_by_reason"] == {"poison": 4}
    assert len(s.spool) == 0 and s._stats.pairs_replayed == 20
    assert sorted(comp.ids) == sorted(f"r{i:04d}" for i in range(24) if i not in (0, 1, 2, 3))
    assert [p.name for p in (tmp_path / "spool" / "rejected").iterdir()] == [
        "0000000000000000-4.json"
    ]


async def test_a_full_disk_counts_the_pairs_and_shutdown_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write of the spool fails with ENOSPC (the os-level write patched): the pairs are
    counted as dropped (spool_write_error) and the last pass at shutdown completes."""
    real_open = open

    def full_disk(path: Any, mode: str = "r") -> Any:
        f = real_open(path, mode)
        if "w" in mode:

            def write(_: bytes) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            f.write = write
        return f

    port = free_port()
    async with shipper(f"http://127.0.0.1:{port}", tmp_path, batch_size=5) as s:
        for i in range(10):
            s.enqueue(pair(i))
        monkeypatch.setattr(spool_module, "open", full_disk, raising=False)
        await s.close()
        monkeypatch.undo()
        acc = balanced(s)
    assert acc["dropped_by_reason"] == {"spool_write_error": 10}
    assert s.spool.write_errors == 2 and len(s.spool) == 0


async def test_shutdown_waits_for_the_pass_in_progress_and_counts_each_pair_once(
    tmp_path: Path,
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    comp = Comparator()
    app = comp.app()

    @web.middleware
    async def slow(request: web.Request, handler: Any) -> Any:
        entered.set()
        await release.wait()
        return await handler(request)

    app.middlewares.append(slow)
    port = free_port()
    async with shipper(f"http://127.0.0.1:{port}", tmp_path, batch_size=4) as s:
        for i in range(4):
            s.enqueue(pair(i))
        await s.ship_pending(retries=0)  # the comparator is away: spooled
        async with serve_app(app, port=port):
            running = asyncio.create_task(s.ship_pending(retries=0))
            await asyncio.wait_for(entered.wait(), 10)
            closing = asyncio.create_task(s.close())
            await asyncio.sleep(0)
            release.set()
            await asyncio.wait_for(asyncio.gather(running, closing), 10)
        balanced(s)
    assert comp.ids == [f"r{i:04d}" for i in range(4)]
    assert s._stats.pairs_replayed == 4


async def test_a_comparator_failing_every_third_request_sets_no_batch_aside(
    tmp_path: Path,
) -> None:
    """Failures that are the comparator's, not a batch's: each head fails once, then goes
    through on its second try right after the batch behind it, and takes no strike."""
    calls = {"n": 0}

    def every_third(ids: list[str]) -> int:
        calls["n"] += 1
        return 503 if calls["n"] % 3 == 1 else 200

    comp = Comparator(verdict=every_third)
    port = free_port()
    async with shipper(f"http://127.0.0.1:{port}", tmp_path, batch_size=4, poison_after=1) as s:
        for i in range(24):
            s.enqueue(pair(i))
        await s.ship_pending(retries=0)  # six batches spooled
        async with serve_app(comp.app(), port=port):
            for _ in range(12):
                await s.ship_pending(retries=0)
                if not len(s.spool):
                    break
        acc = balanced(s)
    assert acc["dropped"] == 0 and s._stats.pairs_replayed == 24
    assert sorted(comp.ids) == [f"r{i:04d}" for i in range(24)]


async def test_a_list_of_comparators_fails_over_past_a_dead_and_a_failing_one(
    tmp_path: Path,
) -> None:
    """Three replicas: one refuses connections, one answers 503, one stores. Every pair reaches
    the one that stores, none twice, whichever replica the shipper starts at."""
    failing, good = Comparator(verdict=lambda ids: 503), Comparator()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with serve_app(failing.app()) as bad_url, serve_app(good.app()) as good_url:
        for start in range(3):
            async with shipper([dead, bad_url, good_url], tmp_path / str(start), retries=3) as s:
                s.link.current = start
                for i in range(30):
                    s.enqueue(pair(i, rid=f"s{start}-{i}"))
                await s.ship_pending(retries=3)
                balanced(s)
                assert s._stats.pairs_delivered == 30 and s.spool.pairs == 0
                assert s._stats.comparator_failovers == (2 - start) % 3
    assert sorted(good.ids) == sorted(f"s{k}-{i}" for k in range(3) for i in range(30))
    assert failing.taken == []


async def test_one_comparator_url_stays_put_when_it_fails(tmp_path: Path) -> None:
    failing = Comparator(verdict=lambda ids: 503)
    async with serve_app(failing.app()) as url, shipper(url, tmp_path) as s:
        s.enqueue(pair(1))
        await s.ship_pending(retries=2)
        assert s._stats.comparator_failovers == 0 and s.spool.pairs == 1
        assert failing.answers == [503, 503, 503]
        balanced(s)


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_a_replica_refusing_the_token_or_lacking_the_route_is_passed_over(
    tmp_path: Path, status: int
) -> None:
    """An answer about the replica, not the batch: the batch is kept and the next replica takes
    it; with that replica alone, the batch waits in the spool instead of being dropped."""
    wrong, good = Comparator(verdict=lambda ids: status), Comparator()
    async with serve_app(wrong.app()) as bad_url, serve_app(good.app()) as good_url:
        for start in range(2):
            async with shipper([bad_url, good_url], tmp_path / f"l{start}", retries=2) as s:
                s.link.current = start
                for i in range(20):
                    s.enqueue(pair(i, rid=f"{status}-{start}-{i}"))
                await s.ship_pending(retries=2)
                acc = balanced(s)
                assert acc["dropped"] == 0 and s._stats.pairs_delivered == 20
        async with shipper(bad_url, tmp_path / "alone") as s:
            s.enqueue(pair(1, rid="alone"))
            await s.ship_pending(retries=1)
            acc = balanced(s)
            assert acc["dropped"] == 0 and s.spool.pairs == 1
    assert len(good.ids) == 40 and wrong.taken == []


async def test_the_queue_holds_at_most_its_bytes_of_bodies_and_counts_the_rest(
    tmp_path: Path,
) -> None:
    """A comparator slower than the traffic, with large answers: the queue of pairs waiting to
    be shipped grows. Its bodies are bounded in bytes as well as its pairs in number, so the
    sidecar's memory stays bounded: past ``max_queue_bytes`` a pair is counted as dropped
    (``queue_full``), and once the queue has been shipped it takes pairs again."""
    comp = Comparator()
    big = 200_000  # each body ~200 KB: a pair holds ~400 KB
    async with serve_app(comp.app()) as url, shipper(url, tmp_path, max_queue_bytes=1_000_000) as s:
        for i in range(10):
            s.enqueue(pair(i, big))
        assert s.queued == 2 and s.queued_bytes <= 1_000_000
        assert s._stats.dropped["queue_full"] == 8
        s.enqueue(pair(10, 10))  # a small pair still fits beside them
        assert s.queued == 3
        await s.ship_pending(retries=0)
        assert s.queued == 0 and s.queued_bytes == 0
        for i in range(11, 13):
            s.enqueue(pair(i, big))
        await s.ship_pending(retries=0)
        acc = balanced(s)
    assert acc["dropped_by_reason"] == {"queue_full": 8}
    assert sorted(comp.ids) == ["r0000", "r0001", "r0010", "r0011", "r0012"]


async def test_a_pair_put_back_for_the_next_batch_keeps_its_bytes_counted(tmp_path: Path) -> None:
    """A pair that does not fit the batch being made goes back to the front of the queue: its
    bytes stay counted until it is shipped, never twice, never lost."""
    comp = Comparator(limit=MIN_BATCH_BYTES * 4)
    async with serve_app(comp.app()) as url, shipper(url, tmp_path) as s:
        for i in range(12):
            s.enqueue(pair(i, 10_000))  # ~20 KB a pair: cut into several batches
        total = s.queued_bytes
        assert total >= 12 * 20_000
        await s.ship_pending(retries=0)
        assert s.queued_bytes == 0
        acc = balanced(s)
    assert acc["dropped"] == 0 and sorted(comp.ids) == [f"r{i:04d}" for i in range(12)]


async def test_a_batch_being_shipped_counts_toward_the_queues_bytes(tmp_path: Path) -> None:
    """A batch keeps its pairs (and their bodies) until it is delivered: while the comparator
    holds it, the queue takes only what fits beside it. Bodies that are not JSON travel as their
    sizes, so a batch is small on the wire while its pairs hold their whole bodies."""
    gate, got = asyncio.Event(), asyncio.Event()

    async def slow_ingest(request: web.Request) -> web.Response:
        await request.read()
        got.set()
        await gate.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/pairs", slow_ingest)

    def binary_pair(i: int) -> CompletedPair:
        body = b"\x89PNG" + b"x" * 99_996  # not JSON: sent as its size
        return CompletedPair(
            request_id=f"r{i:04d}",
            ts=1_790_000_000.0 + i,
            route="/v2/models/m/infer",
            request_sha256="0" * 64,
            request_body=None,
            prod=Side(Outcome.OK, status=200, latency_ms=1.0, body=body),
            candidate=Side(Outcome.OK, status=200, latency_ms=2.0, body=body),
        )

    bound = 1_000_000
    async with serve_app(app) as url, shipper(url, tmp_path, max_queue_bytes=bound) as s:
        for i in range(20):
            s.enqueue(binary_pair(i))
        first = s.queued
        assert first == 5 and s.queued_bytes == 1_000_000
        task = asyncio.create_task(s.ship_pending(retries=0))
        await asyncio.wait_for(got.wait(), 10)  # the batch is in the comparator's hands
        assert s.queued == 0 and s.shipping == first and s.queued_bytes == 1_000_000
        for i in range(100, 120):
            s.enqueue(binary_pair(i))
        assert s.queued == 0  # no room beside the batch being shipped
        gate.set()
        await asyncio.wait_for(task, 10)
        assert s.queued_bytes == 0
        s.enqueue(binary_pair(200))  # room again
        await s.ship_pending(retries=0)
        acc = balanced(s)
    assert acc["dropped_by_reason"] == {"queue_full": 35}
    assert s.queued_bytes == 0
