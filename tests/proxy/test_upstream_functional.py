"""The candidate client against a raw TCP server that writes exact response bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from proxy.exceptions import UpstreamProtocolError
from proxy.http.candidate import CandidateClient
from tests.proxy.candidate_helpers import request

Reply = Callable[[bytes], bytes | None]  # request head -> response bytes (None: never answer)


@asynccontextmanager
async def raw_server(
    reply: Reply,
    *,
    close_after: bool = False,
    arrived: asyncio.Event | None = None,
    gate: asyncio.Event | None = None,
) -> AsyncIterator[tuple[str, list[int]]]:
    """Serve ``reply`` per request; yields the base URL and a list of accepted connection ids."""
    accepted: list[int] = []
    held: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted))
        try:
            for _ in range(1000):  # bounded: one loop per request on this connection
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                await reader.readexactly(length)
                if arrived is not None:
                    arrived.set()
                if gate is not None:
                    await gate.wait()
                out = reply(head)
                if out is None:
                    await asyncio.sleep(3600)
                    return
                writer.write(out)
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(handle(reader, writer))
        held.add(task)
        task.add_done_callback(held.discard)

    server = await asyncio.start_server(track, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()
        for task in list(held):
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await server.wait_closed()


def fixed(data: bytes) -> Reply:
    return lambda _head: data


@pytest.mark.parametrize(
    ("raw", "status", "body", "version"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Model-Version: 7\r\n\r\nhello",
            200,
            b"hello",
            "7",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
            200,
            b"abcde",
            None,
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            201,
            b"ok",
            None,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", None),
        (b"HTTP/1.1 500 Internal\r\nContent-Length: 4\r\n\r\nboom", 500, b"boom", None),
    ],
)
async def test_response_framings(raw: bytes, status: int, body: bytes, version: str | None) -> None:
    async with raw_server(fixed(raw)) as (url, accepted):
        client = CandidateClient(url, linger_s=1.0)
        for _ in range(3):
            resp = await asyncio.wait_for(request(client, "POST", "/p", [("X-A", "1")], b"{}"), 5)
            assert (resp.status, resp.body, resp.model_version) == (status, body, version)
        # Keep-alive: one connection for all three; never after a bodiless answer (a body sent
        # anyway could arrive late, into the next exchange).
        assert len(accepted) == (3 if status == 204 else 1)
        await client.close()


async def test_body_until_close_is_read_and_the_connection_not_reused() -> None:
    raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-eof"
    async with raw_server(fixed(raw), close_after=True) as (url, accepted):
        client = CandidateClient(url, linger_s=1.0)
        for _ in range(2):
            resp = await asyncio.wait_for(request(client, "POST", "/p", [], b""), 5)
            assert resp.body == b"until-eof"
        assert len(accepted) == 2
        await client.close()


async def test_garbage_is_a_protocol_error() -> None:
    async with raw_server(fixed(b"SSH-2.0-OpenSSH\r\n\r\n")) as (url, _):
        client = CandidateClient(url, linger_s=1.0)
        with pytest.raises(UpstreamProtocolError):
            await asyncio.wait_for(request(client, "POST", "/p", [], b""), 5)
        await client.close()


async def test_a_late_answer_drains_and_the_connection_is_reused() -> None:
    arrived, gate = asyncio.Event(), asyncio.Event()
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with raw_server(fixed(raw), arrived=arrived, gate=gate) as (url, accepted):
        client = CandidateClient(url, linger_s=30.0)
        task = asyncio.ensure_future(request(client, "POST", "/p", [], b""))
        await asyncio.wait_for(arrived.wait(), 5)
        task.cancel()  # the deadline passed while the candidate still works on it
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.lingering == 1
        gate.set()  # the late answer arrives and drains
        for _ in range(500):
            if client.lingering == 0:
                break
            await asyncio.sleep(0.01)
        assert client.lingering == 0
        resp = await asyncio.wait_for(request(client, "POST", "/p", [], b""), 5)
        assert resp.body == b"ok" and len(accepted) == 1
        await client.close()


async def test_a_hung_call_lingers_then_is_aborted() -> None:
    async with raw_server(lambda _h: None) as (url, _):
        client = CandidateClient(url, linger_s=0.05)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await request(client, "POST", "/p", [], b"")
        assert client.lingering == 1
        for _ in range(500):
            if client.lingering == 0 and client.open_connections == 0:
                break
            await asyncio.sleep(0.01)
        assert client.lingering == 0 and client.open_connections == 0
        await client.close()


async def test_stale_keep_alive_connection_is_retried_once() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    async with raw_server(fixed(raw), close_after=True) as (url, accepted):
        client = CandidateClient(url, linger_s=1.0)
        assert (await request(client, "POST", "/p", [], b"")).body == b"x"
        # The server closed after answering although it did not say so; the next call recovers.
        for _ in range(3):
            assert (await asyncio.wait_for(request(client, "POST", "/p", [], b""), 5)).body == b"x"
        assert len(accepted) == 4
        await client.close()


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_body_past_keep_bytes_is_counted_and_drained_but_not_held(framing: str) -> None:
    big = b"x" * (3 * 1024 * 1024)
    small = b'{"ok":true}'

    def reply(head: bytes) -> bytes:
        body = big if b"/big" in head else small
        if framing == "chunked":
            chunks = b"".join(
                b"%x\r\n%s\r\n" % (len(body[i : i + 65536]), body[i : i + 65536])
                for i in range(0, len(body), 65536)
            )
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async with raw_server(reply) as (url, accepted):
        client = CandidateClient(url, linger_s=1.0, keep_bytes=1024)
        try:
            resp = await request(client, "POST", "/big", [], b"{}")
            assert (resp.status, resp.size, resp.truncated, resp.body) == (200, len(big), True, b"")
            again = await request(client, "POST", "/small", [], b"{}")
            assert (again.body, again.size, again.truncated) == (small, len(small), False)
            assert len(accepted) == 1  # the drained connection was reused
        finally:
            await client.close()
