"""The data port's HTTP/1.1 handling on raw sockets: pipelining, HTTP/1.0, upgrades, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

from tests.proxy.fakes import (
    SEEN,
    RunningProxy,
    payload_bytes,
    prod_app,
    running_proxy,
    serve_app,
)


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One response with a Content-Length body: (status line, lower-cased headers, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head[:-4].split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get(b"content-length", 0))), 10)
    return lines[0], headers, body


@asynccontextmanager
async def _proxied(app: web.Application, tmp_path: Path) -> AsyncIterator[RunningProxy]:
    """The real proxy in front of ``app``, with no candidate listening (nothing here is teed)."""
    async with (
        serve_app(app) as prod,
        running_proxy(prod=prod, candidate="http://127.0.0.1:9", spool_dir=str(tmp_path)) as proxy,
    ):
        yield proxy


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))


async def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    app = prod_app()
    async with _proxied(app, tmp_path) as proxy:
        reader, writer = await _connect(proxy.url)
        writer.write(
            b"".join(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
                for b in (b"first", b"second!", b"3")
            )
        )
        bodies = [(await _read_response(reader))[2] for _ in range(3)]
        writer.close()
    assert bodies == [b"first", b"second!", b"3"]
    assert [s["body"] for s in app[SEEN]] == [b"first", b"second!", b"3"]


async def test_an_http10_client_gets_an_unsized_body_delimited_by_close(tmp_path: Path) -> None:
    async with _proxied(prod_app(), tmp_path) as proxy:
        reader, writer = await _connect(proxy.url)
        writer.write(b"GET /chunked/300000 HTTP/1.0\r\nHost: x\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)  # until the proxy closes
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == payload_bytes(300_000)


async def test_upgrades_are_ignored_and_connect_is_refused(tmp_path: Path) -> None:
    app = prod_app()
    async with _proxied(app, tmp_path) as proxy:
        reader, writer = await _connect(proxy.url)
        writer.write(
            b"GET /bytes/2 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        upgraded = await _read_response(reader)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed after the answer
        writer.close()
        reader, writer = await _connect(proxy.url)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Content-Length: 2\r\n\r\nhi"
        )
        with_body = await _read_response(reader)
        writer.close()
        reader, writer = await _connect(proxy.url)
        writer.write(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        connect = await _read_response(reader)
        writer.close()
    # RFC 9110 §7.8: the upgrade is ignored and the request answered over HTTP/1.1.
    assert upgraded[0].startswith(b"HTTP/1.1 200") and upgraded[2] == payload_bytes(2)
    assert upgraded[1][b"connection"] == b"close"
    # A body after an upgrade head would be lost to the parser: refused, never truncated.
    assert with_body[0].startswith(b"HTTP/1.1 501")
    assert connect[0].startswith(b"HTTP/1.1 501")
    assert app[SEEN] == []  # /bytes does not record; /echo and CONNECT never got through


async def test_limits_on_the_target_and_the_header_count(tmp_path: Path) -> None:
    app = prod_app()
    async with _proxied(app, tmp_path) as proxy:
        statuses = []
        for request in (
            b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /echo HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n",
            b"GET /echo HTTP/1.1\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n",
        ):
            reader, writer = await _connect(proxy.url)
            writer.write(request)
            statuses.append((await _read_response(reader))[0].split(b" ")[1])
            writer.close()
    assert statuses == [b"414", b"431", b"431"]
    assert app[SEEN] == []


async def test_hop_by_hop_headers_stay_on_their_hop_and_the_request_id_is_added(
    tmp_path: Path,
) -> None:
    app = prod_app()
    async with _proxied(app, tmp_path) as proxy:
        reader, writer = await _connect(proxy.url)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
            b"Keep-Alive: timeout=5\r\nTE: trailers\r\nX-End: 2\r\nContent-Length: 2\r\n\r\n{}"
        )
        _, headers, body = await _read_response(reader)
        writer.close()
    assert body == b"{}" and headers[b"x-shadow-request-id"]
    seen = {k.lower(): v for k, v in app[SEEN][0]["headers"].items()}
    assert seen["x-end"] == "2" and seen["x-shadow-request-id"]
    assert not {"x-hop", "keep-alive", "te"} & set(seen)


async def test_production_connections_are_kept_and_reused(tmp_path: Path) -> None:
    app = prod_app()
    async with _proxied(app, tmp_path) as proxy:
        reader, writer = await _connect(proxy.url)
        for i in range(20):
            body = b"%d" % i
            writer.write(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            assert (await _read_response(reader))[2] == body
        writer.close()
    assert len(app[SEEN]) == 20
    assert len({s["peer"] for s in app[SEEN]}) == 1  # one upstream connection, twenty requests


async def test_chunked_request_trailers_never_become_headers(tmp_path: Path) -> None:
    app = prod_app()
    async with _proxied(app, tmp_path) as proxy:
        reader, writer = await _connect(proxy.url)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\nX-Injected: 1\r\nAuthorization: Bearer smuggled\r\n\r\n"
        )
        _, _, body = await _read_response(reader)
        writer.close()
    assert body == b"{}"
    seen = {k.lower() for k in app[SEEN][0]["headers"]}
    assert not {"x-injected", "authorization"} & seen


async def test_a_chunked_http10_request_is_400_and_never_forwarded(tmp_path: Path) -> None:
    app = prod_app()
    async with _proxied(app, tmp_path) as proxy:
        reader, writer = await _connect(proxy.url)
        writer.write(
            b"POST /echo HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        )
        status, _, body = await _read_response(reader)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed after the answer
        writer.close()
    assert status.startswith(b"HTTP/1.1 400") and b"HTTP/1.0" in body
    assert app[SEEN] == []


async def test_past_max_connections_a_client_gets_503(tmp_path: Path) -> None:
    app = prod_app()
    async with (
        serve_app(app) as prod,
        running_proxy(
            prod=prod, candidate="http://127.0.0.1:9", spool_dir=str(tmp_path), max_connections=2
        ) as proxy,
    ):
        held = [await _connect(proxy.url) for _ in range(2)]
        reader, writer = await _connect(proxy.url)
        status, _, _ = await _read_response(reader)
        writer.close()
        assert status.startswith(b"HTTP/1.1 503")
        # The two within the limit are served.
        for r, w in held:
            w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
            assert (await _read_response(r))[2] == b"ok"
            w.close()


async def test_past_max_buffered_bytes_a_body_is_503_and_the_bytes_are_given_back(
    tmp_path: Path,
) -> None:
    app = prod_app()
    limit = 1024 * 1024
    async with (
        serve_app(app) as prod,
        running_proxy(
            prod=prod,
            candidate="http://127.0.0.1:9",
            spool_dir=str(tmp_path),
            max_buffered_bytes=limit,
        ) as proxy,
    ):
        # One client holds half of the port's budget with a body it has not finished.
        r1, w1 = await _connect(proxy.url)
        w1.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % limit)
        w1.write(b"a" * (limit // 2))
        await w1.drain()
        # Another's body would take the port over its budget: 503, not more memory. (The first
        # half was in the proxy's socket before this connection opened, so it is read first.)
        r2, w2 = await _connect(proxy.url)
        big = b"b" * (limit // 2 + 1024)
        w2.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
        status, _, _ = await _read_response(r2)
        w2.close()
        # The first finishes and is answered; afterwards the whole budget is free again.
        w1.write(b"a" * (limit - limit // 2))
        assert (await _read_response(r1))[2] == b"a" * limit
        r3, w3 = await _connect(proxy.url)
        w3.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
        assert (await _read_response(r3))[2] == big
        w1.close()
        w3.close()
    assert status.startswith(b"HTTP/1.1 503")


async def test_a_refusal_is_not_lost_while_the_refused_body_is_still_arriving(
    tmp_path: Path,
) -> None:
    app = prod_app()
    body = b"x" * 300_000
    async with _proxied(app, tmp_path) as proxy:
        reader, writer = await _connect(proxy.url)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: %d\r\n\r\n"
            % len(body)
            + body
        )
        # The client is still sending when the proxy answers; it reads only afterwards. The
        # proxy closes its side, drops what is still coming, then closes: no reset eats the 417.
        await writer.drain()
        status, _, _ = await _read_response(reader)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    assert status.startswith(b"HTTP/1.1 417")
    assert app[SEEN] == []
