"""Forwarding on real sockets: what a client gets through the proxy equals what it gets directly."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.proxy.fakes import (
    SEEN,
    FakeCandidate,
    admin_status,
    free_port,
    prod_app,
    running_proxy,
    serve_app,
)

E2E_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Content-Length",
    "X-Custom",
    "X-Method",
    "X-Query",
    "Vary",
    "X-Stream",
)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def _fetch(
    session: aiohttp.ClientSession, method: str, url: str, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with session.request(method, url, data=body) as resp:
        data = await resp.read()
        return resp.status, {h: resp.headers[h] for h in E2E_HEADERS if h in resp.headers}, data


CASES = [
    ("GET", "/bytes/0", None),
    ("GET", "/bytes/10", None),
    ("GET", "/bytes/3000000", None),  # several MiB: streamed, not inlined
    ("GET", "/chunked/2500000", None),
    ("GET", "/gzip", None),
    ("POST", "/echo?x=1&y=%20z", b"hello"),
    ("PUT", "/echo", b"x" * 100_000),
    ("PATCH", "/echo", b"{}"),
    ("DELETE", "/echo", None),
    ("OPTIONS", "/echo", None),
    ("HEAD", "/bytes/1234", None),
    ("GET", "/status/201", None),
    ("GET", "/status/302", None),
    ("GET", "/status/404", None),
    ("POST", "/status/500", b"{}"),
    ("GET", "/status/503", None),
    ("GET", "/status/204", None),
]


async def test_responses_are_byte_identical_to_direct_access(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    candidate = FakeCandidate()
    async with (
        serve_app(prod_app()) as prod,
        serve_app(candidate.app()) as cand,
        running_proxy(prod=prod, candidate=cand, spool_dir=str(tmp_path)) as proxy,
    ):
        for method, path, body in CASES:
            direct = await _fetch(client, method, prod + path, body)
            proxied = await _fetch(client, method, proxy.url + path, body)
            assert proxied == direct, f"{method} {path}"
        async with client.get(proxy.url + "/gzip") as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert (await resp.read())[:2] == b"\x1f\x8b"  # still compressed, untouched


async def test_request_reaches_production_unchanged_with_request_id(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    app = prod_app()
    async with (
        serve_app(app) as prod,
        running_proxy(prod=prod, candidate="http://127.0.0.1:9", spool_dir=str(tmp_path)) as proxy,
    ):
        body = bytes(range(256)) * 10
        async with client.post(
            proxy.url + "/echo",
            data=body,
            headers={"X-Trace": "abc", "Connection": "keep-alive, X-Hop", "X-Hop": "1"},
        ) as resp:
            assert await resp.read() == body
            rid = resp.headers["X-Shadow-Request-Id"]
        seen = app[SEEN][-1]
        assert seen["body"] == body
        assert seen["headers"]["X-Trace"] == "abc"
        assert seen["headers"]["X-Shadow-Request-Id"] == rid
        assert "X-Hop" not in seen["headers"]  # named by Connection: hop-by-hop


async def test_unreachable_production_is_502(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    async with (
        running_proxy(
            prod=f"http://127.0.0.1:{free_port()}",
            candidate="http://127.0.0.1:9",
            spool_dir=str(tmp_path),
        ) as proxy,
        client.get(proxy.url + "/anything") as resp,
    ):
        assert resp.status == 502


async def test_production_timeout_is_504_and_never_the_candidates_answer(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    release, entered = asyncio.Event(), asyncio.Event()
    candidate = FakeCandidate()
    async with (
        serve_app(prod_app(release=release, entered=entered)) as prod,
        serve_app(candidate.app()) as cand,
        running_proxy(
            prod=prod, candidate=cand, prod_timeout_ms=200, spool_dir=str(tmp_path)
        ) as proxy,
    ):
        async with client.post(proxy.url + "/v2/models/m/infer", data=b"{}") as resp:
            assert resp.status == 504
        assert entered.is_set()
        release.set()


async def _raw_prod(response: bytes) -> asyncio.Server:
    """A production that reads one request head, writes ``response`` and drops the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.transport.abort()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize(
    ("response", "expect_status"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly 12 byte", 502),  # inline: clean 502
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", None),  # streamed
    ],
)
async def test_production_breaking_off_mid_body(
    tmp_path: Path,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    response: bytes,
    expect_status: int | None,
) -> None:
    server = await _raw_prod(response)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_proxy(
            prod=f"http://127.0.0.1:{port}", candidate="http://127.0.0.1:9", spool_dir=str(tmp_path)
        ) as proxy:
            if expect_status is not None:
                async with client.get(proxy.url + "/x") as resp:
                    assert resp.status == expect_status
            else:
                # Head already sent: the client sees a truncated body, as from production itself.
                with pytest.raises(aiohttp.ClientPayloadError):
                    async with client.get(proxy.url + "/x") as resp:
                        await resp.read()
            async with client.get(proxy.url + "/x") as resp:  # and the proxy keeps serving
                assert resp.status in (200, 502)
    finally:
        server.close()
        await server.wait_closed()
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"


async def test_client_hanging_up_mid_stream_is_not_a_server_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        serve_app(prod_app()) as prod,
        running_proxy(prod=prod, candidate="http://127.0.0.1:9", spool_dir=str(tmp_path)) as proxy,
    ):
        port = int(proxy.url.rsplit(":", 1)[1])
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /bytes/20000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            await reader.read(65536)
            writer.transport.abort()  # hang up with most of the body unsent
        async with aiohttp.ClientSession() as session, session.get(proxy.url + "/bytes/10") as resp:
            assert resp.status == 200  # still serving
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"


async def test_slow_clients_are_cut_off(tmp_path: Path) -> None:
    app = prod_app()
    async with (
        serve_app(app) as prod,
        running_proxy(
            prod=prod,
            candidate="http://127.0.0.1:9",
            client_body_timeout_s=0.2,
            keepalive_timeout_s=0.2,
            spool_dir=str(tmp_path),
        ) as proxy,
    ):
        port = int(proxy.url.rsplit(":", 1)[1])
        # A body that never completes: 408, then the connection closes.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        reply = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert reply.startswith(b"HTTP/1.1 408") and b"Connection: close" in reply
        writer.close()
        # A head that never completes (slowloris): closed without an answer.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    assert app[SEEN] == []  # production never saw either


async def test_production_timeout_holds_on_a_kept_alive_connection(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()
    app = prod_app(release=release)
    async with (
        serve_app(app) as prod,
        running_proxy(
            prod=prod, candidate="http://127.0.0.1:9", prod_timeout_ms=200, spool_dir=str(tmp_path)
        ) as proxy,
    ):
        for _ in range(2):  # answered in time: the production connection goes back to the pool
            async with client.post(proxy.url + "/echo", data=b"{}") as resp:
                assert resp.status == 200
        async with client.post(proxy.url + "/v2/models/m/infer", data=b"{}") as resp:
            assert resp.status == 504
        release.set()
    peers = {seen["peer"] for seen in app[SEEN]}
    assert len(app[SEEN]) == 3 and len(peers) == 1  # all three on one production connection


async def test_a_body_that_stalls_after_earlier_requests_is_still_cut_off(
    tmp_path: Path,
) -> None:
    async with (
        serve_app(prod_app()) as prod,
        running_proxy(
            prod=prod,
            candidate="http://127.0.0.1:9",
            client_body_timeout_s=0.2,
            spool_dir=str(tmp_path),
        ) as proxy,
    ):
        port = int(proxy.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):  # whole bodies on a kept-alive connection
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            assert await asyncio.wait_for(reader.readexactly(2), 10) == b"{}"
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        reply = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert reply.startswith(b"HTTP/1.1 408") and b"Connection: close" in reply
        writer.close()


async def test_a_large_teed_body_reaches_production_and_the_candidate_whole(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    candidate = FakeCandidate()
    body = bytes(range(256)) * 12_000  # 3 MiB: over the streaming threshold, under the tee's limit
    app = prod_app()
    async with (
        serve_app(app) as prod,
        serve_app(candidate.app()) as cand,
        running_proxy(prod=prod, candidate=cand, spool_dir=str(tmp_path)) as proxy,
    ):
        async with client.post(proxy.url + "/v2/models/m/infer", data=io.BytesIO(body)) as resp:
            assert (await resp.json())["outputs"][0]["data"] == [len(body)]
        for _ in range(1000):  # bounded: the tee's call lands on its own schedule
            if candidate.requests:
                break
            await asyncio.sleep(0.01)
    assert app[SEEN][0]["body"] == body
    assert candidate.requests[0]["body"] == body


@pytest.mark.parametrize("path", ["/echo", "/v2/models/m/infer"])  # forwarded as it comes; teed
@pytest.mark.parametrize("hang_up", ["fin", "reset"])
async def test_a_client_breaking_off_its_upload_is_a_client_abort_not_a_production_error(
    tmp_path: Path, client: aiohttp.ClientSession, hang_up: str, path: str
) -> None:
    async with (
        serve_app(prod_app()) as prod,
        running_proxy(prod=prod, candidate="http://127.0.0.1:9", spool_dir=str(tmp_path)) as proxy,
    ):
        port = int(proxy.url.rsplit(":", 1)[1])
        size = 4 * 1024 * 1024  # over the streaming threshold: handed over as it arrives
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
        writer.write(head.encode())
        writer.write(b"x" * (size // 2))
        await writer.drain()
        if hang_up == "fin":
            writer.write_eof()
        else:
            writer.transport.abort()
        counters: dict[str, Any] = {}
        for _ in range(100):  # bounded: at most ~10 s
            counters = (await admin_status(client, proxy.admin))["counters"]
            if counters["client_aborts"]:
                break
            await asyncio.sleep(0.1)
        assert counters["client_aborts"] == 1
        assert counters["prod_unreachable"] == 0 and counters["prod_timeouts"] == 0
        if hang_up == "fin":  # no 502 is attempted on the half-closed socket
            assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        async with client.get(proxy.url + "/bytes/10") as resp:
            assert resp.status == 200  # still serving
