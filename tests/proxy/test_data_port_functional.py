"""What the data port answers itself, before production is asked: ``Expect`` and the body limit.

aiohttp's application layer does both for the proxy today; these tests pin the behaviour so that
a leaner server for the data port cannot drop it. Each test talks raw HTTP/1.1, so no client
library in between helps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.proxy.fakes import SEEN, FakeCandidate, RunningProxy, prod_app, running_proxy, serve_app

_LIMIT_S = 10.0  # a bound on every read, so a broken proxy fails the test instead of hanging it


@asynccontextmanager
async def _proxy(
    tmp_path: Path, **fields: object
) -> AsyncIterator[tuple[RunningProxy, list[dict[str, Any]]]]:
    prod = prod_app()
    async with (
        serve_app(prod) as prod_url,
        serve_app(FakeCandidate().app()) as cand_url,
        running_proxy(prod=prod_url, candidate=cand_url, spool_dir=str(tmp_path), **fields) as p,
    ):
        yield p, prod[SEEN]


@asynccontextmanager
async def _connect(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        await writer.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(_LIMIT_S):
        return await reader.readuntil(b"\r\n\r\n")


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response with a ``Content-Length`` body: its head and its body."""
    head = await _read_head(reader)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    async with asyncio.timeout(_LIMIT_S):
        return head, await reader.readexactly(length)


async def test_expect_100_continue_is_answered_before_the_body_is_sent(tmp_path: Path) -> None:
    body = b'{"inputs": []}'
    async with _proxy(tmp_path) as (proxy, seen), _connect(proxy.url) as (reader, writer):
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        # The client sends the body only once it is told to continue.
        interim = await _read_head(reader)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        head, got = await _read_response(reader)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert got == body
    assert seen[-1]["body"] == body


async def test_an_unknown_expectation_is_417_and_never_forwarded(tmp_path: Path) -> None:
    async with _proxy(tmp_path) as (proxy, seen), _connect(proxy.url) as (reader, writer):
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 2\r\n\r\n{}"
        )
        head, _ = await _read_response(reader)
    assert head.startswith(b"HTTP/1.1 417 ")
    assert seen == []


async def test_a_body_over_client_max_size_is_413_and_never_forwarded(tmp_path: Path) -> None:
    limit = 4096
    body = b"x" * (limit + 1)
    async with (
        _proxy(tmp_path, client_max_size=limit) as (proxy, seen),
        _connect(proxy.url) as (reader, writer),
    ):
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        head, _ = await _read_response(reader)
        assert head.startswith(b"HTTP/1.1 413 ")
        assert seen == []
        # A body at the limit still goes through.
        async with _connect(proxy.url) as (reader2, writer2):
            ok = b"y" * limit
            writer2.write(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(ok) + ok
            )
            head2, got = await _read_response(reader2)
    assert head2.startswith(b"HTTP/1.1 200 ")
    assert got == ok


async def test_a_pipelined_100_continue_comes_after_the_answer_before_it(tmp_path: Path) -> None:
    async with _proxy(tmp_path) as (proxy, seen), _connect(proxy.url) as (reader, writer):
        writer.write(
            b"GET /chunked/300000 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        head = await _read_head(reader)
        assert head.startswith(b"HTTP/1.1 200 ") and b"chunked" in head.lower()
        body = bytearray()
        async with asyncio.timeout(_LIMIT_S):
            for _ in range(10_000):  # bounded: one chunk per turn
                size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                if size == 0:
                    await reader.readexactly(2)
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        assert len(body) == 300_000 and b"100 Continue" not in body
        # Only now, with the answer before it complete, the go-ahead for the second request.
        assert await _read_head(reader) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"{}")
        head, got = await _read_response(reader)
    assert head.startswith(b"HTTP/1.1 200 ") and got == b"{}"
    assert seen[-1]["body"] == b"{}"
