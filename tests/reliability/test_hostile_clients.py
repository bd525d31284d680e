"""Hostile clients: malformed, oversized, smuggling and slow requests.

Production here is :class:`RawProduction`, which records the exact header block of every request
it receives. Whatever a client sends, each request production sees must be unambiguous: one
framing (a single ``Content-Length`` *or* ``Transfer-Encoding: chunked``), and no second request
hidden in a first one's body (the marker path ``/smuggled`` never arrives).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.reliability.conftest import Upstreams
from tests.reliability.fakes import LoopThread, ProxyProcess, RawProduction, wait_until

INFER = "/v2/models/ok/infer"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
REJECTED = {400, 413, 414, 431, 501}

# name -> raw request bytes; each is ambiguous or malformed and must be refused (or, at most,
# forwarded with one clean framing).
ATTACKS: dict[str, bytes] = {
    "cl_and_te": (
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED
    ),
    "te_and_cl": (
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 40\r\n\r\n0\r\n\r\n" + SMUGGLED
    ),
    "duplicate_cl_differing": (
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 38\r\n\r\n{}" + SMUGGLED
    ),
    "duplicate_cl_equal": (
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 2\r\n\r\n{}" + SMUGGLED
    ),
    "cl_list": (
        b"POST "
        + INFER.encode()
        + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 38\r\n\r\n{}"
        + SMUGGLED
    ),
    "cl_plus_sign": (
        b"POST "
        + INFER.encode()
        + b" HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\n{}"
        + SMUGGLED
    ),
    "te_obfuscated": (
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED
    ),
    "te_chunked_not_last": (
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED
    ),
    "te_twice": (
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED
    ),
    "space_before_colon": (
        b"POST "
        + INFER.encode()
        + b" HTTP/1.1\r\nHost: x\r\nContent-Length : 38\r\n\r\n{}"
        + SMUGGLED
    ),
    "obs_fold_te": (
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLED
    ),
    "bad_chunk_size": (
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n" + SMUGGLED
    ),
    "garbage_request_line": b"GARBAGE\r\n\r\n",
    "bad_version": b"POST " + INFER.encode() + b" HTTP/9.9\r\nHost: x\r\n\r\n",
    "nul_in_header": b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "bad_method_token": b"P(ST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "bare_lf_headers": b"POST " + INFER.encode() + b" HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}",
    "oversized_header": (
        b"POST "
        + INFER.encode()
        + b" HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * 100_000
        + b"\r\nContent-Length: 0\r\n\r\n"
    ),
    "too_many_headers": (
        b"POST "
        + INFER.encode()
        + b" HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
        + b"Content-Length: 0\r\n\r\n"
    ),
    "oversized_request_line": b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.fixture
def raw_prod(lt: LoopThread) -> Iterator[RawProduction]:
    prod = RawProduction(lt)
    prod.start()
    yield prod
    prod.stop()


def _exchange(url: str, payload: bytes) -> bytes:
    """Send ``payload`` on a fresh connection and read until the proxy closes it (bounded)."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    received = bytearray()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(payload)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            sock.settimeout(3)  # a keep-alive answer leaves the socket open; stop reading then
            for _ in range(1000):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
    return bytes(received)


def _status(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1."), reply[:200]
    return int(reply.split(b" ", 2)[1])


def _framings(head: str) -> tuple[int, int]:
    names = [ln.split(":", 1)[0].strip().lower() for ln in head.split("\r\n")[1:] if ":" in ln]
    return names.count("content-length"), names.count("transfer-encoding")


def test_ambiguous_and_malformed_requests_are_refused_and_never_reach_production(
    raw_prod: RawProduction, up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    proxy = start_proxy(prod=raw_prod.url, candidate=up.cand_url, comparator=up.comp_url)
    statuses: dict[str, int] = {}
    for name, payload in ATTACKS.items():
        before = len(raw_prod.heads)
        statuses[name] = _status(_exchange(proxy.url, payload))
        heads = raw_prod.heads[before:]
        for head in heads:
            cl, te = _framings(head)
            assert cl + te <= 1, f"{name}: production received an ambiguous request:\n{head}"
            assert "/smuggled" not in head, f"{name}: a smuggled request reached production"
        if statuses[name] not in REJECTED:
            # Accepted: at most the one (clean) request went through, never the hidden one.
            assert len(heads) <= 1, (name, heads)
    assert all("/smuggled" not in h for h in raw_prod.heads)
    refused = {n for n, s in statuses.items() if s in REJECTED}
    # Every attack whose framing is genuinely ambiguous or malformed is refused outright.
    must_refuse = set(ATTACKS) - {"duplicate_cl_equal"}
    assert must_refuse <= refused, {n: statuses[n] for n in must_refuse - refused}
    assert proxy.proc.poll() is None
    with httpx.Client(timeout=10) as client:
        assert client.post(proxy.url + INFER, content=b"{}").status_code == 200


def test_slow_header_connections_do_not_starve_or_leak(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """200 connections trickling half a request each: real clients are still served, and the
    sockets are released when the slow clients go away."""
    proxy = start_proxy(prod=up.prod_url, candidate=up.cand_url, comparator=up.comp_url)
    parts = urlsplit(proxy.url)
    assert parts.hostname and parts.port
    baseline = proxy.tcp_connections()  # listeners only: no client has connected yet
    slow: list[socket.socket] = []
    try:
        for _ in range(200):
            sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
            sock.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
        wait_until(lambda: proxy.tcp_connections() >= baseline + 200, "the proxy holding them")
        for sock in slow[:50]:
            sock.sendall(b"a")  # still trickling
        with httpx.Client(timeout=10) as client:
            for i in range(20):
                resp = client.post(proxy.url + INFER, content=b'{"i": %d}' % i)
                assert resp.status_code == 200
    finally:
        for sock in slow:
            sock.close()
    # What stays: at most the pooled keep-alive connections to production, candidate, comparator.
    wait_until(lambda: proxy.tcp_connections() <= baseline + 4, "slow sockets released")


def test_a_half_sent_request_is_closed_by_the_proxy(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """Headers that never finish: the proxy closes the connection after ``keepalive_timeout_s``
    (aiohttp's own default for a bare AppRunner would be 3630 s)."""
    proxy = start_proxy(
        prod=up.prod_url,
        candidate=up.cand_url,
        comparator=up.comp_url,
        env={"SHADOWTEE_PROXY__KEEPALIVE_TIMEOUT_S": "1"},
    )
    assert proxy.status()["config"]["keepalive_timeout_s"] == 1
    reply = _half_sent(proxy, b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert reply == b"" or _status(reply) in {400, 408}
    assert up.prod.seen == []


def _half_sent(proxy: ProxyProcess, payload: bytes) -> bytes:
    """Send ``payload`` and block until the proxy answers or closes (the socket timeout, 30 s,
    only turns a proxy that never does into a failure)."""
    parts = urlsplit(proxy.url)
    assert parts.hostname and parts.port
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(payload)
        reply = b""
        with contextlib.suppress(ConnectionResetError):
            reply = sock.recv(4096)
        return reply


def test_a_body_over_client_max_size_is_refused_before_production(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    proxy = start_proxy(
        prod=up.prod_url,
        candidate=up.cand_url,
        comparator=up.comp_url,
        env={"SHADOWTEE_PROXY__CLIENT_MAX_SIZE": "100000"},
    )
    with httpx.Client(timeout=10) as client:
        resp = client.post(proxy.url + INFER, content=b"x" * 200_000)
        assert resp.status_code == 413
        assert client.post(proxy.url + INFER, content=b"x" * 1000).status_code == 200
    assert [len(s["body"]) for s in up.prod.seen] == [1000]
    wait_until(proxy.settled, "settled")


def test_a_request_whose_body_never_completes_is_closed_by_the_proxy(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """A body promised and never sent: closed (or 408) after ``client_body_timeout_s``."""
    proxy = start_proxy(
        prod=up.prod_url,
        candidate=up.cand_url,
        comparator=up.comp_url,
        env={"SHADOWTEE_PROXY__CLIENT_BODY_TIMEOUT_S": "1"},
    )
    assert proxy.status()["config"]["client_body_timeout_s"] == 1
    head = b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
    reply = _half_sent(proxy, head)
    assert reply == b"" or _status(reply) in {400, 408}
    assert up.prod.seen == []
    assert proxy.status()["counters"]["client_body_timeouts"] == 1
    wait_until(proxy.settled, "settled")
