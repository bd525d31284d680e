"""The data port's protocols without sockets: a fake transport and a fake clock drive them.

Bytes go in through ``data_received`` exactly as chosen (one byte at a time, many requests at
once); the fake transport records what is written and whether reading is paused; timers run when
the test moves the clock. The socket suites then prove the same behaviour end to end.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, cast

import pytest

from proxy.exceptions import UpstreamTimeout
from proxy.http.client import ClientConnection, ConnectionState, ResponseHead
from proxy.http.exchange import Upstream
from proxy.http.listener import Server
from proxy.http.message import Limits, Request
from proxy.http.parse import STREAM_BODY_BYTES
from proxy.http.production import HIGH_WATER
from proxy.http.server import LINGER_S, PIPELINE_MAX, Connection


class FakeTransport(asyncio.Transport):
    def __init__(self, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self.reading = True
        self.pauses = 0
        self.closing = False
        self.eof_written = False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closing and not self.eof_written, "write after close"
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def take(self) -> bytes:
        out = bytes(self.written)
        self.written.clear()
        return out


class FakeClock:
    """The loop's clock and timers, moved by the test; tasks and futures stay the real loop's."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.now = 1000.0
        self._timers: list[tuple[float, int, asyncio.TimerHandle, Callable[[], object]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(
        self, when: float, callback: Callable[..., object], *args: object
    ) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, args, self._loop)
        heapq.heappush(self._timers, (when, next(self._seq), handle, lambda: callback(*args)))
        return handle

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: object
    ) -> asyncio.TimerHandle:
        return self.call_at(self.now + delay, callback, *args)

    def create_task(self, coro: Any) -> asyncio.Task[Any]:
        return self._loop.create_task(coro)

    def create_future(self) -> asyncio.Future[Any]:
        return self._loop.create_future()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self._timers and self._timers[0][0] <= self.now:
            _, _, handle, run = heapq.heappop(self._timers)
            if not handle.cancelled():
                run()


async def settle() -> None:
    for _ in range(20):  # let handler tasks and call_soon callbacks run; bounded
        await asyncio.sleep(0)


LIMITS = Limits(max_body_bytes=1 << 20, keepalive_timeout_s=5.0, body_timeout_s=2.0)


def serve(
    handler: Callable[[Request, Connection], Any], clock: FakeClock
) -> tuple[Server, Connection, FakeTransport]:
    server = Server(handler, LIMITS, lambda: None, loop=cast(asyncio.AbstractEventLoop, clock))
    conn = Connection(server)
    transport = FakeTransport(conn)
    conn.connection_made(transport)
    return server, conn, transport


def get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"


# --- the server connection --------------------------------------------------------------------


async def test_pipelined_requests_fed_byte_by_byte_are_answered_in_order() -> None:
    clock = FakeClock(asyncio.get_running_loop())
    seen: list[bytes] = []

    async def handler(req: Request, conn: Connection) -> bool:
        seen.append(req.target)
        conn.write(b"<%s>" % req.target)
        return True

    _, conn, transport = serve(handler, clock)
    for byte in get(b"/1") + get(b"/2") + get(b"/3"):
        conn.data_received(bytes([byte]))
    await settle()
    assert seen == [b"/1", b"/2", b"/3"]
    assert transport.take() == b"</1></2></3>"


async def test_a_full_pipeline_pauses_reading_and_resumes_as_it_drains() -> None:
    clock = FakeClock(asyncio.get_running_loop())
    gate = asyncio.Event()

    async def handler(req: Request, conn: Connection) -> bool:
        await gate.wait()
        return True

    _, conn, transport = serve(handler, clock)
    conn.data_received(get(b"/x") * (PIPELINE_MAX + 2))
    await settle()
    assert not transport.reading  # one being answered, the queue full: stop reading the client
    gate.set()
    await settle()
    assert transport.reading and conn.idle


async def test_a_client_that_does_not_read_stops_the_next_answer_and_the_reading() -> None:
    clock = FakeClock(asyncio.get_running_loop())
    answered: list[bytes] = []

    async def handler(req: Request, conn: Connection) -> bool:
        answered.append(req.target)
        conn.write(b"x" * 1000)
        return True

    _, conn, transport = serve(handler, clock)
    conn.pause_writing()  # the client's socket buffer is full
    conn.data_received(b"".join(get(b"/%d" % i) for i in range(3 * PIPELINE_MAX)))
    await settle()
    assert answered == [b"/0"]  # the next answer waits for the client to read this one
    assert not transport.reading
    conn.resume_writing()
    await settle()
    assert len(answered) == 3 * PIPELINE_MAX and transport.reading


async def test_the_idle_clock_closes_a_connection_that_sends_no_head() -> None:
    clock = FakeClock(asyncio.get_running_loop())
    _, conn, transport = serve(lambda req, conn: asyncio.sleep(0, True), clock)
    conn.data_received(b"GET /slow")  # half a head, then nothing
    clock.advance(LIMITS.keepalive_timeout_s - 0.1)
    assert not transport.closing
    clock.advance(0.2)
    assert transport.closing and transport.take() == b""


async def test_the_body_clock_answers_408_to_a_body_that_stalls() -> None:
    clock = FakeClock(asyncio.get_running_loop())
    timeouts: list[int] = []
    server = Server(
        lambda req, conn: asyncio.sleep(0, True),
        LIMITS,
        lambda: timeouts.append(1),
        loop=cast(asyncio.AbstractEventLoop, clock),
    )
    conn = Connection(server)
    transport = FakeTransport(conn)
    conn.connection_made(transport)
    conn.data_received(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    clock.advance(LIMITS.body_timeout_s + 0.1)
    assert transport.take().startswith(b"HTTP/1.1 408 ") and timeouts == [1]
    # Then a lingering close: the answer and a FIN, what the client still sends read and
    # dropped for a while, then the connection closed.
    assert transport.eof_written and not transport.closing
    conn.data_received(b"defg")
    clock.advance(LINGER_S + 0.1)
    assert transport.closing
    await settle()
    assert server.buffered == 0  # the three bytes it held were given back


@pytest.mark.parametrize("whole", [True, False])
async def test_a_streamed_body_read_whole_leaves_the_ports_count_after_its_handler(
    whole: bool,
) -> None:
    """A body over STREAM_BODY_BYTES arrives as a stream; a handler that reads it whole (the
    tee) holds it, so the port counts its bytes until the handler is done — then not any more,
    whether the body ended or its client broke it off while it was being read."""
    clock = FakeClock(asyncio.get_running_loop())
    got: list[int] = []

    async def handler(req: Request, conn: Connection) -> bool:
        got.append(len(await req.read_body()))
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        return True

    limits = Limits(max_body_bytes=4 << 20, keepalive_timeout_s=5.0, body_timeout_s=2.0)
    server = Server(handler, limits, lambda: None, loop=cast(asyncio.AbstractEventLoop, clock))
    conn = Connection(server)
    conn.connection_made(FakeTransport(conn))
    size = STREAM_BODY_BYTES + 4096
    conn.data_received(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
    conn.data_received(b"x" * (STREAM_BODY_BYTES // 2))
    await settle()
    assert server.buffered == STREAM_BODY_BYTES // 2  # held for the handler
    if whole:
        conn.data_received(b"x" * (size - STREAM_BODY_BYTES // 2))
    else:
        conn.connection_lost(ConnectionResetError("the client went away"))
    await settle()
    assert got == ([size] if whole else [])
    assert server.buffered == 0


async def test_a_100_continue_waits_for_the_answer_in_progress() -> None:
    clock = FakeClock(asyncio.get_running_loop())
    gate = asyncio.Event()

    async def handler(req: Request, conn: Connection) -> bool:
        if req.target == b"/slow":
            conn.write(b"<slow-head>")
            await gate.wait()
            conn.write(b"<slow-end>")
        else:
            conn.write(b"<%s>" % req.body)
        return True

    _, conn, transport = serve(handler, clock)
    conn.data_received(
        get(b"/slow") + b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: 2\r\n\r\n"
    )
    await settle()
    assert transport.take() == b"<slow-head>"
    gate.set()
    await settle()
    assert transport.take() == b"<slow-end>HTTP/1.1 100 Continue\r\n\r\n"
    conn.data_received(b"{}")
    await settle()
    assert transport.take() == b"<{}>"


# --- the upstream connection ------------------------------------------------------------------


class Owner:
    def __init__(self) -> None:
        self.released: list[ClientConnection] = []
        self.forgotten: list[ClientConnection] = []

    def release(self, conn: ClientConnection) -> None:
        self.released.append(conn)

    def forget(self, conn: ClientConnection) -> None:
        self.forgotten.append(conn)


class Sink:
    """Records an answer; pauses reading above ``HIGH_WATER`` the way production's does."""

    def __init__(self) -> None:
        self.status = 0
        self.body = bytearray()
        self.completed = False
        self.error: Exception | None = None

    def head(self, conn: Upstream, head: ResponseHead) -> None:
        self.status = head.status

    def data(self, conn: Upstream, chunk: bytes) -> None:
        self.body += chunk
        if len(self.body) >= HIGH_WATER:
            conn.pause_reading()

    def done(self, conn: Upstream) -> None:
        self.completed = True

    def fail(self, exc: Exception) -> None:
        self.error = exc


def upstream(
    clock: FakeClock, read_timeout_s: float | None = None
) -> tuple[ClientConnection, FakeTransport, Owner]:
    owner = Owner()
    conn = ClientConnection(owner, read_timeout_s, loop=cast(asyncio.AbstractEventLoop, clock))
    transport = FakeTransport(conn)
    conn.connection_made(transport)
    return conn, transport, owner


async def test_an_answer_that_completes_while_reading_is_paused_leaves_the_connection_clean() -> (
    None
):
    clock = FakeClock(asyncio.get_running_loop())
    conn, transport, owner = upstream(clock)
    sink = Sink()
    conn.send(get(b"/big"), False, sink)
    body = b"b" * (2 * HIGH_WATER)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert sink.completed and bytes(sink.body) == body
    assert transport.pauses == 1  # it paused on the way ...
    assert transport.reading  # ... and the end of the answer resumed it
    assert owner.released == [conn] and conn.is_available()
    assert repr(conn) == "<ClientConnection [idle]>"


@pytest.mark.parametrize(
    "after",
    [b"X", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
)
async def test_bytes_after_an_answer_close_the_connection(after: bytes) -> None:
    clock = FakeClock(asyncio.get_running_loop())
    conn, transport, _ = upstream(clock)
    sink = Sink()
    conn.send(get(b"/"), False, sink)
    conn.data_received(b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n" + after)
    assert sink.completed and sink.status == 204  # the answer itself was whole
    assert conn.state is ConnectionState.CLOSED and transport.closing
    assert not conn.is_available()


async def test_bytes_while_idle_close_the_connection() -> None:
    clock = FakeClock(asyncio.get_running_loop())
    conn, transport, _ = upstream(clock)
    conn.data_received(b"HTTP/1.1 200 OK\r\n")
    assert conn.state is ConnectionState.CLOSED and transport.closing


async def test_production_silence_times_out_but_a_pause_for_a_slow_client_does_not() -> None:
    clock = FakeClock(asyncio.get_running_loop())
    conn, _, _ = upstream(clock, read_timeout_s=5.0)
    sink = Sink()
    conn.send(get(b"/"), False, sink)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n" + b"b" * HIGH_WATER)
    clock.advance(60.0)  # paused for the client's sake: production is not silent
    assert sink.error is None
    conn.resume_reading()
    clock.advance(4.0)
    assert sink.error is None
    clock.advance(1.5)  # 5 s of real silence since the resume
    assert isinstance(sink.error, UpstreamTimeout)
