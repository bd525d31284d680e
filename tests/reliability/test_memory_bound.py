"""Bounded memory (the short versions of ``bench/soak_hung_candidate`` and of the leak check).

A candidate that never answers, under sustained load: in-flight candidate calls stop at
``max_inflight`` (the rest are shed and counted), the pairing buffer stays bounded, and the proxy's
RSS stops growing. Then ~10^4 faulty tees: afterwards the proxy holds no more sockets, tasks or
memory than before them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from comparator.wire import PairBatch
from tests.reliability.conftest import Upstreams
from tests.reliability.fakes import Gate, LoopThread, ProxyProcess, wait_until
from tests.reliability.scenarios import faulty_tees, hung_candidate

MAX_INFLIGHT = 64
CONCURRENCY = 32
# The leak check sends this many faulty tees; CI uses 3000 (about 15 s here); the 10^4
# runs with SHADOWTEE_LEAK_N=10000 (about a minute on 2 cores).
LEAK_N = int(os.environ.get("SHADOWTEE_LEAK_N", "3000"))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hung_candidate_keeps_inflight_buffer_and_rss_bounded(tmp_path: Path) -> None:
    result = hung_candidate(
        tmp_path, duration_s=16, concurrency=CONCURRENCY, max_inflight=MAX_INFLIGHT
    )
    load = [s for s in result.samples if s["phase"] == "load"]
    assert len(load) >= 10
    assert result.ok == result.sent and result.client_errors == 0  # clients never noticed
    assert max(s["tee_inflight"] for s in load) <= MAX_INFLIGHT
    assert max(s["tee_inflight"] for s in load[2:]) == MAX_INFLIGHT  # the bound was reached
    assert max(s["pairing_buffer_pairs"] for s in load) <= MAX_INFLIGHT + CONCURRENCY
    counters = result.extra["counters"]
    assert counters["candidate_outcomes"]["shed"] > 0  # past the bound: shed and counted
    # Plateau: after warm-up, the second half of the run adds (almost) nothing to the first.
    warm = load[3:]
    half = len(warm) // 2
    first, second = max(s["rss_mib"] for s in warm[:half]), max(s["rss_mib"] for s in warm[half:])
    assert second - first < 8.0, [s["rss_mib"] for s in load]
    assert result.samples[-1]["tee_inflight"] == 0  # everything released afterwards


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_faulty_tees_leak_no_sockets_tasks_or_memory(tmp_path: Path) -> None:
    result = faulty_tees(tmp_path, n=LEAK_N, concurrency=CONCURRENCY)
    before, after = result.samples
    assert result.ok == result.sent == LEAK_N
    # Pooled keep-alive connections (to production and to the candidate, at most one per
    # concurrent client each) are the only fds that may legitimately differ; a per-request leak
    # would add thousands.
    assert after["fds"] <= before["fds"] + 2 * CONCURRENCY, (before, after)
    assert after["tee_inflight"] == after["pairing_buffer_pairs"] == 0
    assert after["rss_mib"] - before["rss_mib"] < 16.0, (before, after)
    outcomes = result.extra["counters"]["candidate_outcomes"]
    assert outcomes["error"] > 0 and outcomes["timeout"] > 0


# --- what any client can make the data port hold -------------------------------------------------

_BLOB = 512 * 1024  # production's answer to GET /blob: inline (one write), half a MiB


def _blob_production() -> web.Application:
    blob = bytes(range(256)) * (_BLOB // 256)

    async def get_blob(_: web.Request) -> web.Response:
        return web.Response(body=blob)

    async def upload(request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_any():  # counted, never held whole
            size += len(chunk)
        return web.Response(text=str(size))

    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/blob", get_blob)
    app.router.add_post("/upload", upload)
    return app


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _settled_rss(proxy: ProxyProcess, limit_s: float = 5.0) -> float:
    """RSS once it stops growing for half a second (bounded by ``limit_s``), in MiB."""
    last, still = proxy.rss_bytes(), 0
    for _ in range(int(limit_s / 0.1)):
        time.sleep(0.1)
        now = proxy.rss_bytes()
        still = still + 1 if now - last < 256 * 1024 else 0
        last = now
        if still >= 5:
            break
    return last / 2**20


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_client_that_pipelines_and_reads_nothing_holds_a_bounded_amount(
    lt: LoopThread, start_proxy: Callable[..., ProxyProcess]
) -> None:
    n = 300
    prod = lt.serve(_blob_production())
    proxy = start_proxy(prod=prod, candidate="http://127.0.0.1:9", comparator=None)
    before = proxy.rss_bytes() / 2**20
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /blob HTTP/1.1\r\nHost: x\r\n\r\n" * n)
        held = _settled_rss(proxy)
        peak = _peak_rss_mib(proxy.pid)
        # Then the client reads: every answer comes, in order, complete.
        got = 0
        buf = bytearray()
        for _ in range(100_000):  # bounded: one recv per turn
            data = sock.recv(1 << 20)
            if not data:
                break
            buf += data
            got = buf.count(b"HTTP/1.1 200 ")
            if got == n and len(buf) >= n * _BLOB:
                break
    print(f"\npipelined {n} x {_BLOB} B, client reading nothing: RSS {before:.0f} -> {held:.0f} MiB, "
          f"peak {peak:.0f} MiB")  # fmt: skip
    assert got == n
    assert held - before < 24, (before, held)  # was ~146 MiB before write back-pressure


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_four_concurrent_60_mib_uploads_hold_a_bounded_amount(
    lt: LoopThread, start_proxy: Callable[..., ProxyProcess]
) -> None:
    size, clients = 60 * 2**20, 4
    prod = lt.serve(_blob_production())
    proxy = start_proxy(
        prod=prod,
        candidate="http://127.0.0.1:9",
        comparator=None,
        env={"SHADOWTEE_PROXY__CLIENT_MAX_SIZE": str(size)},
    )
    before = proxy.rss_bytes() / 2**20
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    block = b"u" * 2**20
    answers: list[bytes] = []

    def upload() -> None:
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size // len(block)):
                sock.sendall(block)
            answers.append(sock.recv(4096))

    threads = [threading.Thread(target=upload) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    peak = _peak_rss_mib(proxy.pid)
    print(f"\n{clients} concurrent uploads of {size >> 20} MiB: RSS before {before:.0f} MiB, "
          f"peak {peak:.0f} MiB ({(peak - before) / clients:.0f} MiB per upload)")  # fmt: skip
    assert len(answers) == clients
    assert all(a.startswith(b"HTTP/1.1 200 ") and a.endswith(b"%d" % size) for a in answers)
    # Streamed, not held: was ~190 MiB per upload (the body, its join, the encoded request).
    assert peak - before < 48, (before, peak)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_half_sent_heads_past_max_connections_hold_a_bounded_amount(
    lt: LoopThread, start_proxy: Callable[..., ProxyProcess]
) -> None:
    limit, clients = 100, 150
    prod = lt.serve(_blob_production())
    proxy = start_proxy(
        prod=prod,
        candidate="http://127.0.0.1:9",
        comparator=None,
        env={"SHADOWTEE_PROXY__MAX_CONNECTIONS": str(limit)},
    )
    before = proxy.rss_bytes() / 2**20
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    pad = b"X-Pad: " + b"p" * 8000 + b"\r\n"
    socks = [socket.create_connection((host, int(port)), timeout=30) for _ in range(clients)]
    try:
        refused = 0
        for sock in socks:
            # 56 KiB of a head that never ends: under the 64 KiB limit (a refused one may reset)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"GET /blob HTTP/1.1\r\n" + pad * 7)
        held = _settled_rss(proxy)
        peak = _peak_rss_mib(proxy.pid)
        waiting = 0  # the connections being served: still waiting for the rest of a head
        for sock in socks:
            sock.settimeout(0.2)
            try:
                # A refused one got its 503 at once, then its close (a reset, when its head arrived
                # after the close).
                refused += sock.recv(64).startswith(b"HTTP/1.1 503 ")
            except TimeoutError:
                waiting += 1
            except ConnectionResetError:
                refused += 1
    finally:
        for sock in socks:
            sock.close()
    print(f"\n{clients} half-sent heads of 56 KiB, max_connections {limit}: RSS {before:.0f} -> "
          f"{held:.0f} MiB, peak {peak:.0f} MiB; {refused} refused")  # fmt: skip
    assert (waiting, refused) == (limit, clients - limit)
    assert peak - before < 32, (before, peak)  # 100 x 56 KiB of heads, and no more connections


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_60_mib_upload_to_a_teed_route_while_the_tee_is_paused_is_not_held_whole(
    tmp_path: Path, lt: LoopThread, start_proxy: Callable[..., ProxyProcess]
) -> None:
    size, token = 60 * 2**20, "memory-bound-token-7d2e"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "shadowtee_proxy__admin_token").write_text(token + "\n")
    prod = lt.serve(_blob_production())
    proxy = start_proxy(
        prod=prod,
        candidate="http://127.0.0.1:9",
        comparator=None,
        env={
            "SHADOWTEE_SECRETS_DIR": str(secrets),
            "SHADOWTEE_PROXY__CLIENT_MAX_SIZE": str(size),
            "SHADOWTEE_PROXY__TEE_ROUTES": '["/upload"]',  # teed, sampled at the default rate 1
        },
    )
    pause = urllib.request.Request(
        proxy.admin + "/admin/tee/pause",
        data=b'{"by": "ci"}',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(pause, timeout=30) as resp:
        assert resp.status == 200
    before = proxy.rss_bytes() / 2**20
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    block = b"u" * 2**20
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(block)):
            sock.sendall(block)
        answer = sock.recv(4096)
    peak = _peak_rss_mib(proxy.pid)
    print(f"\n60 MiB upload, tee paused: RSS before {before:.0f} MiB, peak {peak:.0f} MiB")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"%d" % size)
    assert proxy.status()["counters"]["tee_paused"]["operator"] == 1
    # Forwarded as it arrives: read whole first it was ~180 MiB (the body, its join, the request).
    assert peak - before < 24, (before, peak)


def test_a_60_mib_upload_over_max_tee_body_bytes_to_a_teed_route_is_not_held_whole(
    lt: LoopThread, up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """Teed and sampled but over ``max_tee_body_bytes`` (8 MiB): forwarded as it arrives, hashed
    on the way; its pair records it as skipped, with the SHA-256 of the body."""
    size = 60 * 2**20
    prod = lt.serve(_blob_production())
    proxy = start_proxy(
        prod=prod,
        candidate=up.cand_url,
        comparator=up.comp_url,
        env={
            "SHADOWTEE_PROXY__CLIENT_MAX_SIZE": str(size),
            "SHADOWTEE_PROXY__TEE_ROUTES": '["/upload"]',  # teed, sampled at the default rate 1
        },
    )
    before = proxy.rss_bytes() / 2**20
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    block = bytes(range(256)) * 4096  # 1 MiB, not all one byte: the digest must see the order
    digest = hashlib.sha256()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        for i in range(size // len(block)):
            piece = block[i % 256 :] + block[: i % 256]
            digest.update(piece)
            sock.sendall(piece)
        answer = sock.recv(4096)
    peak = _peak_rss_mib(proxy.pid)
    print(
        f"\n60 MiB upload over max_tee_body_bytes: RSS before {before:.0f} MiB, peak {peak:.0f} MiB"
    )
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"%d" % size)
    assert peak - before < 24, (before, peak)  # read whole it was ~180 MiB
    wait_until(lambda: up.comp.pairs, "the pair at the comparator")
    (pair,) = up.comp.pairs
    assert pair.candidate.outcome == "skipped"
    assert pair.candidate.error == "request body too large"
    assert pair.request.sha256 == digest.hexdigest()
    status = proxy.status()
    assert status["counters"]["skipped_body_too_large"] == 1
    assert status["accounting"]["unaccounted"] == 0
    assert up.cand.seen == []  # the candidate never saw it


# --- what a slow comparator with large answers makes the shipper hold -----------------------------

_ANSWER = (
    b'{"outputs":[{"name":"y","shape":[1],"datatype":"BYTES","data":["'
    + b"x" * (512 * 1024)
    + b'"]}]}'
)


def _large_answers(answer: bytes = _ANSWER) -> web.Application:
    async def infer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    return app


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_slow_comparator_with_large_answers_holds_the_ship_queue_to_its_bytes(
    lt: LoopThread, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """Production and candidate answer 512 KiB each (a pair holds 1 MiB of bodies, under
    ``max_pair_body_bytes``); the comparator takes no batch until released. The queue of pairs
    waiting to be shipped stops at ``ship_queue_max_bytes`` (the rest counted as ``queue_full``),
    so the sidecar's memory does not grow with the traffic; released, every pair it kept
    arrives and the accounting balances."""
    n, bound = 120, 16 * 1024 * 1024
    gate = Gate(lt)
    received: list[int] = []

    async def slow_ingest(request: web.Request) -> web.Response:
        await gate.event.wait()
        body = await request.read()
        received.append(len(PairBatch.model_validate_json(body).pairs))
        return web.json_response({"received": received[-1]})

    comp_app = web.Application(client_max_size=256 * 1024 * 1024)
    comp_app.router.add_post("/v1/pairs", slow_ingest)
    models = lt.serve(_large_answers())
    proxy = start_proxy(
        prod=models,
        candidate=models,
        comparator=lt.serve(comp_app),
        env={
            "SHADOWTEE_PROXY__SHIP_QUEUE_MAX_BYTES": str(bound),
            "SHADOWTEE_PROXY__SHIP_TIMEOUT_MS": "60000",
            "SHADOWTEE_PROXY__BATCH_SIZE": "4",
        },
    )
    before = proxy.rss_bytes() / 2**20
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            resp = client.post(proxy.url + "/v2/models/m/infer", content=b'{"i": %d}' % i)
            assert resp.status_code == 200 and resp.content == _ANSWER  # clients never notice
    wait_until(proxy.settled, "every pair out of the pairing buffer")
    gauges = proxy.gauges()
    assert 0 < gauges["ship_queue_bytes"] <= bound, gauges
    dropped = proxy.metric("shadowtee_proxy_pairs_dropped_total", reason="queue_full")
    assert dropped >= n - 2 * bound // 2**20, dropped  # the queue and one batch in flight
    grown = _settled_rss(proxy) - before
    assert grown < 3 * bound / 2**20, grown  # unbounded, it held all 120 MiB of bodies
    gate.open()
    wait_until(lambda: proxy.gauges()["ship_queue_pairs"] == 0, "the queue shipped", 60)
    wait_until(
        lambda: sum(received) + dropped == n, f"{n} pairs delivered or counted ({received})", 30
    )
    # The comparator counts a batch before its answer reaches the proxy, which releases the
    # batch's bytes when it reads that answer: wait for it (a leak would never reach 0).
    wait_until(lambda: proxy.gauges()["ship_queue_bytes"] == 0, "the shipped bytes released", 10)


# --- what large teed requests make the tee hold ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_large_requests_to_a_hung_candidate_hold_at_most_the_tees_bytes(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """One client, one request at a time, 4 MiB bodies (under ``max_tee_body_bytes``), and a
    candidate that never answers within its long deadline: each answered request leaves its
    body with the tee (its candidate call and its pair) until that deadline. The tee holds at
    most ``max_tee_bytes`` of request bodies; past it a tee is shed and counted, so one client
    cannot make the sidecar hold ``max_inflight`` large bodies."""
    n, size, bound = 40, 4 * 1024 * 1024, 32 * 1024 * 1024
    proxy = start_proxy(
        prod=up.prod_url,
        candidate=up.cand_url,
        comparator=up.comp_url,
        shadow_timeout_ms=20_000,
        env={"SHADOWTEE_PROXY__MAX_TEE_BYTES": str(bound)},
    )
    before = proxy.rss_bytes() / 2**20
    body = b'{"pad": "' + b"x" * (size - 11) + b'"}'
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            resp = client.post(proxy.url + "/v2/models/hang/infer", content=body)
            assert resp.status_code == 200  # clients never notice
    held = _settled_rss(proxy) - before
    shed = proxy.metric("shadowtee_proxy_candidate_outcomes_total", outcome="shed")
    assert shed >= n - bound // size, shed
    assert proxy.gauges()["tee_inflight"] <= bound // size
    assert held < 4 * bound / 2**20, held  # unbounded: 40 bodies twice over, ~320 MiB
    up.cand.gate.open()


# --- the port's count of request bytes, for bodies read whole for the tee --------------------------


def _post_raw(url: str, head_length: int, body: bytes) -> bytes:
    """POST ``body`` under a Content-Length of ``head_length`` on a fresh connection; close
    early when the body is shorter (the client breaks off), else read the answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    head = (
        b"POST /v2/models/ok/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % head_length
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        if len(body) < head_length:
            time.sleep(0.2)  # the proxy has read what came, whole for the tee
            return b""
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bodies_read_whole_for_the_tee_leave_the_ports_count_when_answered_or_broken_off(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """A body over 1 MiB arrives as a stream and, being teed, is read whole; its bytes count
    toward ``max_buffered_bytes`` while the request is handled, and no longer once it is —
    answered, or broken off by its client while it was being read. One at a time, eight 2 MiB
    bodies and eight broken off must all fit under 8 MiB, again and again."""
    bound, size = 8 * 1024 * 1024, 2 * 1024 * 1024
    proxy = start_proxy(
        prod=up.prod_url,
        candidate=up.cand_url,
        comparator=up.comp_url,
        env={"SHADOWTEE_PROXY__MAX_BUFFERED_BYTES": str(bound)},
    )
    body = b'{"pad": "' + b"x" * (size - 11) + b'"}'
    for i in range(8):
        _post_raw(proxy.url, size + 1024 * 1024, body)  # broken off after 2 of 3 MiB
        answer = _post_raw(proxy.url, size, body)
        assert answer.startswith(b"HTTP/1.1 200 "), (i, answer[:200])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_candidate_that_reads_nothing_leaves_no_request_in_a_lingering_connection(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """A candidate that accepts connections and never reads: each teed request's bytes stay in
    the connection's write buffer. When its call times out, that connection is closed rather
    than left to linger for a late answer (none can come), so the bodies do not pile up past
    ``max_tee_bytes`` while no call counts them."""
    deaf = socket.socket()
    deaf.bind(("127.0.0.1", 0))
    deaf.listen(128)
    n, size, bound = 30, 7 * 1024 * 1024, 18 * 1024 * 1024  # the least 8 MiB bodies allow
    try:
        proxy = start_proxy(
            prod=up.prod_url,
            candidate=f"http://127.0.0.1:{deaf.getsockname()[1]}",
            comparator=up.comp_url,
            shadow_timeout_ms=20,
            env={
                "SHADOWTEE_PROXY__MAX_TEE_BYTES": str(bound),
                "SHADOWTEE_PROXY__CANDIDATE_LINGER_MS": "20000",
            },
        )
        before = _settled_rss(proxy)
        body = b'{"pad": "' + b"x" * (size - 11) + b'"}'
        with httpx.Client(timeout=30) as client:
            for _ in range(n):
                resp = client.post(proxy.url + "/v2/models/ok/infer", content=body)
                assert resp.status_code == 200
                time.sleep(0.05)  # past the 20 ms deadline: each tee's call has timed out
        held = _settled_rss(proxy) - before
        assert proxy.gauges()["tee_held_bytes"] == 0
        assert held < 4 * bound / 2**20, held  # lingering with their requests: ~200 MiB
        timeouts = proxy.metric("shadowtee_proxy_candidate_outcomes_total", outcome="timeout")
        assert timeouts == n
    finally:
        deaf.close()


# --- what large answers make the tee hold ----------------------------------------------------------

_NEAR_MIB = 900 * 1024  # under max_pair_body_bytes (1 MiB): kept whole in a pair


def _answer_of(size: int) -> bytes:
    return b'{"outputs": [{"name": "y", "data": "' + b"x" * (size - 40) + b'"}]}'


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_large_production_answers_waiting_for_a_slow_candidate_hold_at_most_the_tees_bytes(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """Production answers 900 KiB at once; the candidate has not answered yet (it answers when
    released). Each pair holds production's answer until the candidate's side is in: one client,
    one request at a time, could make ``max_inflight`` calls hold ``max_inflight`` answers. The
    tee's byte budget (``max_tee_bytes``) counts them: past it the candidate call is given up,
    its side recorded as shed (never as an invalid output, which would count against the
    candidate) and the pair shipped at once."""
    n, bound = 100, 16 * 1024 * 1024
    answer = _answer_of(_NEAR_MIB)
    proxy = start_proxy(
        prod=up.lt.serve(_large_answers(answer)),
        candidate=up.cand_url,
        comparator=up.comp_url,
        shadow_timeout_ms=30_000,
        env={
            "SHADOWTEE_PROXY__MAX_TEE_BYTES": str(bound),
            "SHADOWTEE_PROXY__MAX_TEE_BODY_BYTES": str(1024 * 1024),
            # The shed pairs are shipped at once: keep what shipping holds small beside it.
            "SHADOWTEE_PROXY__SHIP_QUEUE_MAX_BYTES": str(4 * 1024 * 1024),
            "SHADOWTEE_PROXY__MAX_BATCH_BYTES": str(2 * 1024 * 1024),
        },
    )
    before = proxy.rss_bytes() / 2**20
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            resp = client.post(proxy.url + "/v2/models/hang/infer", content=b'{"i": %d}' % i)
            assert resp.status_code == 200 and resp.content == answer  # clients never notice
    held = _settled_rss(proxy) - before
    gauges = proxy.gauges()
    assert gauges["tee_held_bytes"] <= bound, gauges
    shed = proxy.metric("shadowtee_proxy_candidate_outcomes_total", outcome="shed")
    assert shed >= n - bound // len(answer), shed
    assert held < 3 * bound / 2**20, held  # unbounded: 100 answers of 900 KiB, ~88 MiB
    up.cand.gate.open()
    wait_until(proxy.settled, "every call answered")
    acct = proxy.status()["accounting"]
    assert acct["unaccounted"] == 0, acct
    assert proxy.gauges()["tee_held_bytes"] == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_large_candidate_answers_arriving_slowly_hold_at_most_the_tees_bytes(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """The candidate sends 900 KiB of a 1 MiB-ish answer and stalls (until released); 64
    clients at once. Each call holds what has arrived of its answer: 64 × 900 KiB. The tee's
    byte budget counts those bytes too: a call whose answer would pass it keeps reading but
    holds nothing more and ends as shed, so the sidecar holds about ``max_tee_bytes``."""
    n, bound = 64, 16 * 1024 * 1024
    answer = _answer_of(_NEAR_MIB + 64 * 1024)
    gate = Gate(up.lt)

    async def infer(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(answer)
        await resp.prepare(request)
        await resp.write(answer[:_NEAR_MIB])
        await gate.event.wait()
        await resp.write(answer[_NEAR_MIB:])
        await resp.write_eof()
        return resp

    cand = web.Application()
    cand.router.add_post("/v2/models/{name}/infer", infer)
    proxy = start_proxy(
        prod=up.prod_url,
        candidate=up.lt.serve(cand),
        comparator=up.comp_url,
        shadow_timeout_ms=30_000,
        env={
            "SHADOWTEE_PROXY__MAX_TEE_BYTES": str(bound),
            "SHADOWTEE_PROXY__MAX_TEE_BODY_BYTES": str(1024 * 1024),
        },
    )
    before = proxy.rss_bytes() / 2**20

    def send(i: int) -> int:
        r = httpx.post(proxy.url + "/v2/models/ok/infer", content=b'{"i": %d}' % i, timeout=30)
        return r.status_code

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(send, range(n))) == [200] * n  # clients never notice
    wait_until(lambda: proxy.gauges()["tee_inflight"] == n, "every call under way")
    time.sleep(1.0)  # the answers' first 900 KiB arrive
    held = _settled_rss(proxy) - before
    assert proxy.gauges()["tee_held_bytes"] <= bound
    assert held < 3 * bound / 2**20, held  # unbounded: 64 partial answers, ~56 MiB
    gate.open()
    wait_until(proxy.settled, "every call answered")
    shed = proxy.metric("shadowtee_proxy_candidate_outcomes_total", outcome="shed")
    ok = proxy.metric("shadowtee_proxy_candidate_outcomes_total", outcome="ok")
    assert shed + ok == n and shed >= n - bound // _NEAR_MIB, (shed, ok)
    assert proxy.gauges()["tee_held_bytes"] == 0
    acct = proxy.status()["accounting"]
    assert acct["unaccounted"] == 0, acct


# --- what a comparator's answers make the shipper hold ---------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_comparator_answering_a_huge_body_is_not_read(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """A comparator that stores each batch and answers 200 with 256 MiB of body: the shipper
    needs no body from a 2xx and reads none (it read the whole answer: +548 MiB RSS for one of
    300 MiB), so the sidecar's memory does not follow what a comparator sends back."""
    received: list[int] = []
    chunk = b"x" * (1024 * 1024)

    async def ingest(request: web.Request) -> web.StreamResponse:
        received.append(len(PairBatch.model_validate_json(await request.read()).pairs))
        resp = web.StreamResponse()
        resp.content_length = 256 * len(chunk)
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(256):
                await resp.write(chunk)
        return resp

    comp = web.Application()
    comp.router.add_post("/v1/pairs", ingest)
    proxy = start_proxy(
        prod=up.prod_url,
        candidate=up.cand_url,
        comparator=up.lt.serve(comp),
        env={"SHADOWTEE_PROXY__BATCH_SIZE": "5"},
    )
    before = proxy.rss_bytes() / 2**20
    with httpx.Client(timeout=30) as client:
        for i in range(20):
            resp = client.post(proxy.url + "/v2/models/ok/infer", content=b'{"i": %d}' % i)
            assert resp.status_code == 200
    wait_until(lambda: proxy.status()["accounting"]["delivered"] == 20, "every pair delivered", 30)
    assert sum(received) == 20  # each once: a 200 is a delivery, whatever its body
    peak = _peak_rss_mib(proxy.pid) - before
    assert peak < 64, peak  # reading the answers: +256 MiB or more
