"""Production's answers through the real proxy, from a raw-socket production that writes exact bytes.

Every answer a proxy must not pass on (ambiguous framing, control bytes in the head, bytes after a
bodiless answer, a stray interim response) is a 502 for the client that asked, and that production
connection is closed, so no byte of it can reach the next client. The client side talks raw
HTTP/1.1 too, so no client library smooths anything over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.proxy.fakes import FakeCandidate, RunningProxy, running_proxy, serve_app

_LIMIT_S = 10.0  # a bound on every read, so a broken proxy fails the test instead of hanging it

# (request head, request body) -> the response's bytes, or pieces of them with events between
# (each event is awaited before the next piece is written).
Answer = Callable[[bytes, bytes], "bytes | list[bytes | asyncio.Event]"]


@dataclass
class RawProduction:
    """A production that answers each request with the bytes ``answer`` returns."""

    answer: Answer
    url: str = ""
    requests: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # conn, head, body
    read_body: bool = True  # False: answer at the head, read nothing more of the connection
    close_after_answer: bool = False  # hang up right after writing an answer
    broken: list[int] = field(default_factory=list)  # bytes of bodies that broke off
    connections: int = 0
    closed: int = 0


@asynccontextmanager
async def raw_production(answer: Answer) -> AsyncIterator[RawProduction]:
    prod = RawProduction(answer)
    held: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = prod.connections
        prod.connections += 1
        try:
            for _ in range(1000):  # bounded: one turn per request on this connection
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if not prod.read_body:
                    prod.requests.append((conn, head, b""))
                    writer.write(prod.answer(head, b""))  # type: ignore[arg-type]
                    await writer.drain()
                    await reader.read()  # until the proxy closes
                    return
                try:
                    body = await reader.readexactly(length)
                except asyncio.IncompleteReadError as exc:
                    prod.broken.append(len(exc.partial))
                    raise
                prod.requests.append((conn, head, body))
                out = prod.answer(head, body)
                for piece in [out] if isinstance(out, bytes) else out:
                    if isinstance(piece, asyncio.Event):
                        await asyncio.wait_for(piece.wait(), _LIMIT_S)
                    else:
                        writer.write(piece)
                        await writer.drain()
                if prod.close_after_answer:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            prod.closed += 1
            writer.close()

    def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(handle(reader, writer))
        held.add(task)
        task.add_done_callback(held.discard)

    server = await asyncio.start_server(track, "127.0.0.1", 0)
    prod.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield prod
    finally:
        server.close()
        for task in list(held):
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await server.wait_closed()


@asynccontextmanager
async def proxy_to(
    answer: Answer, tmp_path: Path, **fields: object
) -> AsyncIterator[tuple[RunningProxy, RawProduction]]:
    async with (
        raw_production(answer) as prod,
        serve_app(FakeCandidate().app()) as cand_url,
        running_proxy(
            prod=prod.url, candidate=cand_url, spool_dir=str(tmp_path), **fields
        ) as proxy,
    ):
        yield proxy, prod


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw client connection with a small read buffer (so it lags behind a large answer)."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError):  # the proxy may have cut it on purpose
            await writer.wait_closed()


async def read_response(
    reader: asyncio.StreamReader, *, head_only: bool = False
) -> tuple[bytes, bytes]:
    """One response (Content-Length or chunked body): its head and its body."""
    async with asyncio.timeout(_LIMIT_S):
        head = await reader.readuntil(b"\r\n\r\n")
        if head_only:
            return head, b""
        length, chunked = 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"transfer-encoding":
                chunked = value.strip().lower() == b"chunked"
        if not chunked:
            return head, await reader.readexactly(length)
        parts: list[bytes] = []
        for _ in range(100_000):  # bounded: one turn per chunk
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return head, b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        raise AssertionError("too many chunks")


def get(path: bytes, method: bytes = b"GET") -> bytes:
    return method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"


def by_path(answers: dict[bytes, bytes]) -> Answer:
    def answer(head: bytes, _body: bytes) -> bytes:
        return answers[head.split(b" ", 2)[1]]

    return answer


def sized(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_a_large_streamed_answer_then_a_small_one_on_one_keep_alive_connection(
    tmp_path: Path,
) -> None:
    # 3 MB: streamed, and reading from production pauses whenever the proxy holds 256 KiB of it.
    # The last 256 KiB are written once the client has read the rest, so they arrive in one
    # read, reading pauses, and the answer completes while paused.
    big = (bytes(range(256)) * 12_000)[:3_000_000]
    tail = 256 * 1024
    small = b"y" * 300
    read_rest = asyncio.Event()

    def answer(head: bytes, _body: bytes) -> bytes | list[bytes | asyncio.Event]:
        if head.startswith(b"GET /y "):
            return sized(small)
        read_rest.clear()
        whole = sized(big)
        return [whole[:-tail], read_rest, whole[-tail:]]

    async with proxy_to(answer, tmp_path) as (proxy, prod), connect(proxy.url) as (reader, writer):
        for _ in range(3):  # each round reuses the production connection
            writer.write(get(b"/x"))
            async with asyncio.timeout(_LIMIT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                got = await reader.readexactly(len(big) - tail)
                read_rest.set()
                got += await reader.readexactly(tail)
            assert head.startswith(b"HTTP/1.1 200 ") and got == big
            writer.write(get(b"/y"))
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 ") and body == small
    assert [conn for conn, _, _ in prod.requests] == [0] * 6


BAD_ANSWERS = {
    "content-length-with-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "cr-in-header-value": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok",
    "lf-in-header-value": b"HTTP/1.1 200 OK\r\nX-A: a\nb\r\nContent-Length: 2\r\n\r\nok",
    "nul-in-header-value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "nul-in-reason": b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nok",
    "cr-in-reason": b"HTTP/1.1 200 O\rK\r\nContent-Length: 2\r\n\r\nok",
    "connection-names-content-length": b"HTTP/1.1 200 OK\r\nConnection: content-length\r\n"
    b"Content-Length: 2\r\n\r\nok",
    "plus-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\nok\r\n0\r\n\r\n",
    "underscore-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2_0\r\n" + b"o" * 32 + b"\r\n0\r\n\r\n",
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    "gzip-transfer-coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
    "obsolete-line-folding": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    "head-over-64-kib": b"HTTP/1.1 200 OK\r\nX-Big: "
    + b"a" * 70_000
    + b"\r\nContent-Length: 2\r\n\r\nok",
    "switching-protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n"
    b"Connection: upgrade\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
async def test_a_malformed_answer_is_502_and_its_connection_closed(
    case: str, tmp_path: Path
) -> None:
    answer = by_path({b"/bad": BAD_ANSWERS[case], b"/ok": sized(b"fine")})
    async with proxy_to(answer, tmp_path) as (proxy, prod), connect(proxy.url) as (reader, writer):
        writer.write(get(b"/bad"))
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 502 "), (head, body)
        assert b"protocol error" in body
        # The client's connection stays usable; production's is replaced by a fresh one.
        writer.write(get(b"/ok"))
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"fine"
    assert [conn for conn, _, _ in prod.requests] == [0, 1]


@pytest.mark.parametrize(
    ("method", "status_line"),
    [
        (b"HEAD", b"HTTP/1.1 200 OK"),
        (b"GET", b"HTTP/1.1 204 No Content"),
        (b"GET", b"HTTP/1.1 304 Not Modified"),
    ],
)
async def test_bytes_after_a_bodiless_answer_never_reach_the_next_client(
    method: bytes, status_line: bytes, tmp_path: Path
) -> None:
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"

    def answer(head: bytes, _body: bytes) -> bytes:
        if head.startswith(b"GET /next"):
            return sized(b"honest")
        return status_line + b"\r\nContent-Length: 5\r\n\r\nhello" + smuggled

    async with proxy_to(answer, tmp_path) as (proxy, prod):
        async with connect(proxy.url) as (reader, writer):
            writer.write(get(b"/first", method))
            head, _ = await read_response(reader, head_only=True)
            assert head.startswith(status_line + b"\r\n")
        async with connect(proxy.url) as (reader, writer):
            writer.write(get(b"/next"))
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 ") and body == b"honest"
    assert [conn for conn, _, _ in prod.requests] == [0, 1]  # the tainted connection was closed


async def test_interim_answers_never_land_inside_another_response(tmp_path: Path) -> None:
    def answer(head: bytes, _body: bytes) -> bytes:
        if head.startswith(b"GET /a "):  # an interim answer before, and a stray one after
            return (
                b"HTTP/1.1 100 Continue\r\n\r\n"
                + sized(b"first")
                + b"HTTP/1.1 100 Continue\r\n\r\n"
            )
        return sized(b"second")

    async with proxy_to(answer, tmp_path) as (proxy, prod), connect(proxy.url) as (reader, writer):
        writer.write(get(b"/a"))
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"first"
        writer.write(get(b"/b"))
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"second"
    assert [conn for conn, _, _ in prod.requests] == [0, 1]


async def test_a_post_is_never_sent_twice_when_a_kept_alive_connection_breaks(
    tmp_path: Path,
) -> None:
    # Production answers the first request, then reads the next one and closes without answering.
    def answer(head: bytes, _body: bytes) -> bytes:
        return sized(b"first")

    async with proxy_to(answer, tmp_path) as (proxy, prod), connect(proxy.url) as (reader, writer):
        writer.write(get(b"/warm"))
        head, body = await read_response(reader)
        assert body == b"first"
        prod.answer = _hang_up
        writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 502 "), head
    posts = [h for _, h, _ in prod.requests if h.startswith(b"POST")]
    assert len(posts) == 1


async def test_a_get_is_retried_once_on_a_fresh_connection_when_a_kept_alive_one_breaks(
    tmp_path: Path,
) -> None:
    calls = 0

    def answer(head: bytes, _body: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionResetError  # read the request, then hang up without a byte
        return sized(b"ok")

    async with proxy_to(answer, tmp_path) as (proxy, prod), connect(proxy.url) as (reader, writer):
        for _ in range(2):
            writer.write(get(b"/g"))
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 ") and body == b"ok"
    assert [conn for conn, _, _ in prod.requests] == [0, 0, 1]


def _hang_up(_head: bytes, _body: bytes) -> bytes:
    raise ConnectionResetError


async def test_a_large_body_is_forwarded_whole_as_it_arrives(tmp_path: Path) -> None:
    body = (bytes(range(256)) * 20_000)[:5_000_000]  # over the streaming threshold

    def answer(head: bytes, got: bytes) -> bytes:
        return sized(b"%d" % len(got))

    async with proxy_to(answer, tmp_path) as (proxy, prod), connect(proxy.url) as (reader, writer):
        for _ in range(2):  # and the connections on both sides stay usable
            writer.write(
                b"PUT /store HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            for i in range(0, len(body), 100_000):
                writer.write(body[i : i + 100_000])
                await writer.drain()
            head, got = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 ") and got == b"%d" % len(body)
    assert [b for _, _, b in prod.requests] == [body, body]
    assert [conn for conn, _, _ in prod.requests] == [0, 0]


async def test_an_early_answer_to_a_streamed_body_ends_both_connections(tmp_path: Path) -> None:
    def answer(head: bytes, _body: bytes) -> bytes:
        return b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nnope"

    async with proxy_to(answer, tmp_path) as (proxy, prod), connect(proxy.url) as (reader, writer):
        prod.read_body = False
        writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (4 << 20))
        writer.write(b"z" * (1 << 20))
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 413 ") and body == b"nope"
        # The rest of the body is read and dropped (so the answer is not lost to a reset), and
        # then the client connection closes: it cannot go on from the middle of a message.
        writer.write(b"z" * (3 << 20))
        async with asyncio.timeout(_LIMIT_S):
            assert await reader.read() == b""
    assert prod.closed == prod.connections == 1  # and production's is not reused either


async def test_a_streamed_body_the_client_breaks_off_never_reaches_production_whole(
    tmp_path: Path,
) -> None:
    answer = by_path({b"/up": sized(b"ok")})
    async with proxy_to(answer, tmp_path) as (proxy, prod):
        async with connect(proxy.url) as (_reader, writer):
            writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (4 << 20))
            writer.write(b"z" * (2 << 20))
            await writer.drain()
        # At once: not at the body's timeout (60 s) nor production's read timeout (30 s).
        for _ in range(500):  # bounded: production sees its connection close
            if prod.broken:
                break
            await asyncio.sleep(0.01)
    assert prod.requests == [] and prod.broken and prod.broken[0] < 4 << 20


async def test_a_broken_answer_to_an_http10_client_ends_with_a_reset(tmp_path: Path) -> None:
    body = b"c" * 600_000
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (65536, body[i : i + 65536]) for i in range(0, 327_680, 65536)
    )
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks

    def answer(head: bytes, _body: bytes) -> bytes:
        return cut  # written, then production hangs up mid-body

    async with proxy_to(answer, tmp_path) as (proxy, prod), connect(proxy.url) as (reader, writer):
        prod.close_after_answer = True
        writer.write(b"GET /x HTTP/1.0\r\nHost: x\r\n\r\n")
        got = bytearray()
        with pytest.raises(ConnectionResetError):  # a clean close would say "that was all"
            async with asyncio.timeout(_LIMIT_S):
                for _ in range(10_000):  # bounded: one read per turn
                    data = await reader.read(65536)
                    if not data:
                        break
                    got += data
    assert got.startswith(b"HTTP/1.1 200 ") and len(got) < len(body)


async def test_a_broken_answer_keeps_the_pipelined_answers_before_it(tmp_path: Path) -> None:
    body = b"c" * 300_000
    partial = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (
        65536,
        body[:65536],
    )
    answer = by_path({b"/a": sized(b"first"), b"/b": partial})
    async with proxy_to(answer, tmp_path) as (proxy, prod), connect(proxy.url) as (reader, writer):
        prod.close_after_answer = True  # so the answer to /b breaks off after its first chunk
        writer.write(get(b"/a") + get(b"/b"))
        got = bytearray()
        async with asyncio.timeout(_LIMIT_S):
            for _ in range(10_000):  # bounded: one read per turn, until the proxy closes
                data = await reader.read(65536)
                if not data:
                    break
                got += data
    first = sized(b"first").split(b"\r\n", 1)[0]
    assert got.startswith(first) and b"first" in got  # the earlier answer, whole
    assert b"Transfer-Encoding: chunked" in got and not got.endswith(b"0\r\n\r\n")  # /b: cut


async def test_a_client_hanging_up_mid_upload_of_a_teed_body_is_routine(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with proxy_to(by_path({b"/predict": sized(b"ok"), b"/ok": sized(b"fine")}), tmp_path) as (
        proxy,
        prod,
    ):
        async with connect(proxy.url) as (_reader, writer):
            head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (3 << 20)
            writer.write(head + b"z" * (1 << 20))  # teed: read whole, and the client goes
            await writer.drain()
        async with connect(proxy.url) as (reader, writer):
            writer.write(get(b"/ok"))
            status, got = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 200 ") and got == b"fine"
    assert prod.requests[-1][1].startswith(b"GET /ok ")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_late_bytes_after_a_bodiless_answer_never_reach_the_next_request(
    tmp_path: Path,
) -> None:
    late = asyncio.Event()
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"

    def answer(head: bytes, _body: bytes) -> bytes | list[bytes | asyncio.Event]:
        if head.startswith(b"GET /next "):
            return sized(b"honest")
        return [b"HTTP/1.1 204 No Content\r\n\r\n", late, smuggled]  # a body sent anyway, late

    async with proxy_to(answer, tmp_path) as (proxy, prod), connect(proxy.url) as (reader, writer):
        writer.write(get(b"/first"))
        head, _ = await read_response(reader, head_only=True)
        assert head.startswith(b"HTTP/1.1 204 ")
        writer.write(get(b"/next"))
        late.set()  # the stray bytes now, while the next request may be on its way
        head, body = await read_response(reader)
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"honest"
    assert [conn for conn, _, _ in prod.requests] == [0, 1]
