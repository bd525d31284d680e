"""Lean HTTP/1.1 clients for production and the candidate: one write per request, one small parser.

Both upstreams get a client that does only what a proxy needs: send the request in one ``write``,
parse the response head and the body framing (``Content-Length``, chunked, or until close), and
keep the connection for the next request. Production and the candidate each have their own pool
(:class:`ProductionClient`, :class:`CandidateClient`); they share code, never connections.

**Production** answers are streamed: the head is handed over as soon as it is parsed, and body
bytes flow to the caller with back-pressure (reading from production pauses while the client is
slower than production). A response whose whole body is at most ``inline_bytes`` is handed over
complete, so the proxy can answer the client with one write.

**The candidate's** answer is collected whole, but only ``keep_bytes`` of it are held; the rest is
counted. Each call is a :class:`CandidateCall` that the connection calls back, so the tee needs
no task or future per teed request. When the tee's deadline passes, the call's *outcome* is a
timeout at once, but the connection is not torn down: it lingers for up to ``linger_s`` so a late
answer can drain and the connection be reused. Closing it would cost a new TCP handshake per teed
request exactly when the candidate is slow. Lingering connections count towards the tee's
in-flight bound, so a hung candidate fills the bound and further tees are shed instead of opening
a connection per request.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

__all__ = [
    "CandidateCall",
    "CandidateClient",
    "CandidateResponse",
    "ProductionClient",
    "ProductionResponse",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "encode_request",
]

log = logging.getLogger("shadowtee.proxy")

_MAX_HEAD = 64 * 1024
_DROP = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})
# Streaming back-pressure: stop reading from production above this many buffered body bytes.
_HIGH_WATER = 256 * 1024


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# The lengths of the response header names the parser acts on (see ``_Conn._start_body``).
_FRAMING_NAME_LENGTHS = frozenset(
    len(name) for name in ("content-length", "transfer-encoding", "connection", "x-model-version")
)


def encode_request(
    method: str,
    target: bytes,
    host: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
    *,
    always_length: bool = False,
) -> bytes:
    """One HTTP/1.1 request as bytes. ``headers`` must hold no framing or hop-by-hop header."""
    parts = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if body or always_length or method in _BODY_METHODS:
        parts.append(b"Content-Length: %d\r\n" % len(body))
    parts += (b"\r\n", body)
    return b"".join(parts)


class UpstreamProtocolError(ConnectionError):
    """The upstream sent something that is not a well-formed HTTP/1.1 response."""


class UpstreamTimeout(TimeoutError):
    """The upstream sent nothing for longer than the read timeout."""


@dataclass(frozen=True, slots=True)
class CandidateResponse:
    status: int
    model_version: str | None
    body: bytes  # empty when the body was larger than the client's keep_bytes
    size: int  # bytes of body received, kept or not
    truncated: bool = False


class _Sink(Protocol):
    """Receives one response from a connection's parser."""

    def head(self, conn: _Conn, status: int, reason: bytes, lines: list[bytes]) -> None: ...

    def data(self, conn: _Conn, chunk: bytes) -> None: ...

    def done(self, conn: _Conn) -> None: ...

    def fail(self, exc: Exception) -> None: ...


class _Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request on it at a time."""

    def __init__(self, client: _Pool) -> None:
        self._client = client
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._sink: _Sink | None = None
        self._head_request = False
        self._state = "idle"  # idle | head | length | chunk_size | chunk_data | trailers | eof
        self._remaining = 0
        self.length: int | None = None  # the response's Content-Length, when it has one
        self.chunked = False
        self.model_version: str | None = None
        self.reusable = True
        self.got_bytes = False
        self.last_rx = 0.0
        self._time = time.monotonic
        self.lingering: asyncio.TimerHandle | None = None
        self.watchdog: asyncio.TimerHandle | None = None  # production's read timeout

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._time = asyncio.get_running_loop().time

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.last_rx = self._time()
        if self._buf:
            self._buf += data
        else:
            self._buf = bytearray(data)
        try:
            self._parse()
        except (ValueError, UpstreamProtocolError) as exc:
            self._fail(UpstreamProtocolError(f"bad response: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost finishes the work

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._state == "eof":
            try:
                self._take(len(self._buf))
            except UpstreamProtocolError as err:
                self._fail(err)
            else:
                self._complete()
        elif self._state != "idle":
            self._fail(ConnectionResetError("upstream closed the connection"))
        self._client._forget(self)

    # --- requests -----------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._state != "idle"

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def send(self, data: bytes, head_request: bool, sink: _Sink) -> None:
        assert self.transport is not None and self._state == "idle"
        self._sink = sink
        self._head_request = head_request
        self._state = "head"
        self.got_bytes = False
        self.transport.write(data)

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        sink, self._sink = self._sink, None
        self._state = "idle"
        if sink is not None:
            sink.fail(exc)
        if self.transport is not None:
            self.transport.abort()

    def _complete(self) -> None:
        self._state = "idle"
        if self._buf:  # bytes past the response: the framing cannot be trusted any more
            self.reusable = False
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.done(self)
        self._client._release(self)

    def _parse(self) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise UpstreamProtocolError("response head too large")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                if not self._start_body(head):
                    continue  # an interim 1xx response: read the next head
                if self._state == "idle":
                    self._complete()
                    return
            elif state == "length":
                self._remaining -= self._take(min(len(buf), self._remaining))
                if self._remaining:
                    return
                self._complete()
                return
            elif state == "chunk_size":
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise UpstreamProtocolError("chunk size line too long")
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0].strip(), 16)
                if size < 0:
                    raise UpstreamProtocolError("negative chunk size")
                del buf[: end + 2]
                self._remaining = size
                self._state = "chunk_data" if size else "trailers"
            elif state == "chunk_data":
                self._remaining -= self._take(min(len(buf), self._remaining))
                if self._remaining:
                    return
                self._state = "chunk_end"
            elif state == "chunk_end":
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise UpstreamProtocolError("chunk not followed by CRLF")
                del buf[:2]
                self._state = "chunk_size"
            elif state == "trailers":
                if buf[:2] == b"\r\n":
                    del buf[:2]
                else:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buf) > _MAX_HEAD:
                            raise UpstreamProtocolError("trailers too large")
                        return
                    del buf[: end + 4]
                self._complete()
                return
            else:  # "eof" (body until close) or "idle" (unexpected bytes)
                if state == "idle" and buf:
                    raise UpstreamProtocolError("data without a request")
                self._take(len(buf))
                return

    def _take(self, n: int) -> int:
        """Hand ``n`` body bytes from the buffer to the sink."""
        if n == 0:
            return 0
        buf = self._buf
        if n == len(buf):
            chunk = bytes(buf)
            buf.clear()
        else:
            chunk = bytes(buf[:n])
            del buf[:n]
        if self._sink is not None:
            self._sink.data(self, chunk)
        return n

    def _start_body(self, head: bytes) -> bool:
        """Parse a response head and choose the body framing; ``False`` for a 1xx response."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3:
            raise UpstreamProtocolError("not an HTTP/1.x status line")
        status = int(parts[1])
        if 100 <= status < 200:
            if status == 101:
                raise UpstreamProtocolError("101 Switching Protocols was not asked for")
            return False
        self.model_version = None
        length: int | None = None
        chunked = False
        keep_alive = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise UpstreamProtocolError(f"malformed header line {line[:60]!r}")
            if len(name) not in _FRAMING_NAME_LENGTHS:
                continue  # not one of the four names below: no need to lower-case it
            key = name.lower()
            if key == b"content-length":
                value = value.strip()
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise UpstreamProtocolError("bad Content-Length")
                length = int(value)
            elif key == b"transfer-encoding":
                chunked = value.strip().lower().endswith(b"chunked")
                if not chunked:
                    raise UpstreamProtocolError("unsupported Transfer-Encoding")
            elif key == b"connection":
                token = value.strip().lower()
                keep_alive = token != b"close" and (keep_alive or token == b"keep-alive")
            elif key == b"x-model-version":
                self.model_version = value.strip().decode("latin-1")
        if chunked:
            length = None  # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length
        self.reusable = self.reusable and keep_alive
        self.length = length
        self.chunked = chunked
        no_body = self._head_request or status in (204, 304)
        if no_body:
            self._state = "idle"
        elif chunked:
            self._state = "chunk_size"
        elif length is not None:
            self._remaining = length
            self._state = "length" if length else "idle"
        else:
            self.reusable = False
            self._state = "eof"
        if self._sink is not None:
            self._sink.head(self, status, parts[2] if len(parts) > 2 else b"", lines)
        return True


class _Pool:
    """Keep-alive connections to one base URL (``http://host:port[/prefix]``)."""

    def __init__(self, base_url: str, what: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the {what} client speaks plain http://, got {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self.prefix = self._prefix.encode()
        self.host_header = parts.netloc.encode()
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()

    @property
    def open_connections(self) -> int:
        return len(self._all)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Conn(self), self._host, self._port)
        self._all.add(conn)
        return conn

    def _idle_conn(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closing:
                return conn
        return None

    def _release(self, conn: _Conn) -> None:
        if conn.reusable and not conn.closing:
            self._idle.append(conn)
        else:
            conn.abort()

    def _forget(self, conn: _Conn) -> None:
        self._all.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    async def close(self) -> None:
        """Abort every connection (idle, busy or lingering)."""
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()
        # Let connection_lost callbacks run so transports are closed before the loop ends.
        for _ in range(3):
            if not self._all:
                break
            await asyncio.sleep(0)


# --- the candidate ----------------------------------------------------------------------------


class CandidateCall(abc.ABC):
    """One candidate request driven by the connection's callbacks: no task, no future.

    The tee starts thousands of these a second, so the exchange is a plain object that the
    connection's parser calls back (it is the connection's sink) and that reports once, through
    :meth:`finished`, with the response or the exception. :meth:`start` sends on an idle pooled
    connection, or opens one (the only step that needs a task); a kept-alive connection that the
    server had already closed is retried once on a fresh one, as :meth:`CandidateClient.request_raw`
    does. :meth:`abandon` is how the caller gives up (its deadline, shutdown): nothing is reported
    after it, and the connection lingers so a late answer can drain.
    """

    __slots__ = (
        "_chunks",
        "_client",
        "_conn",
        "_connecting",
        "_data",
        "_head",
        "_live",
        "_reused",
        "_size",
        "_status",
        "_truncated",
    )

    def __init__(self, client: CandidateClient, data: bytes, method: str) -> None:
        self._client = client
        self._data = data
        self._head = method == "HEAD"
        self._conn: _Conn | None = None
        self._connecting: asyncio.Task[_Conn] | None = None
        self._reused = False
        self._live = True
        self._chunks: list[bytes] = []
        self._size = 0
        self._status = 0
        self._truncated = False

    @abc.abstractmethod
    def finished(self, resp: CandidateResponse | None, exc: Exception | None) -> None:
        """Called exactly once, unless abandoned first: the response, or what went wrong."""

    def start(self) -> None:
        conn = self._client._idle_conn()
        if conn is None:
            self._open()
        else:
            self._reused = True
            self._send(conn)

    def abandon(self) -> asyncio.Task[object] | None:
        """The caller gave up: report nothing more; let the connection drain a late answer.

        Returns the connection attempt it cancelled, if one was under way, so that a caller
        shutting down can wait for it to unwind.
        """
        self._live = False
        self._data = b""
        connecting = self._connecting
        if connecting is not None:
            connecting.cancel()
        elif self._conn is not None:
            self._client._linger(self._conn)
        return connecting

    def _open(self) -> None:
        self._reused = False
        task = asyncio.get_running_loop().create_task(self._client._connect())
        self._connecting = task
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[_Conn]) -> None:
        self._connecting = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            if self._live:
                self._report(None, exc if isinstance(exc, Exception) else ConnectionError(exc))
            return
        conn = task.result()
        if self._live:
            self._send(conn)
        else:  # opened after the caller gave up: keep it for the next call
            self._client._release(conn)

    def _send(self, conn: _Conn) -> None:
        self._conn = conn
        try:
            conn.send(self._data, self._head, self)
        except Exception as exc:
            conn._sink = None  # this call hears of it here, not again when the connection closes
            conn.abort()
            self.fail(exc)

    def _report(self, resp: CandidateResponse | None, exc: Exception | None) -> None:
        self._live = False
        self._conn = None
        self._data = b""
        self._chunks = []
        try:
            self.finished(resp, exc)
        except Exception:  # the caller's bug must not break the connection it was called from
            log.exception("candidate call: reporting the result failed")

    # --- _Sink (called by the connection's parser) --------------------------------------------

    def head(self, conn: _Conn, status: int, reason: bytes, lines: list[bytes]) -> None:
        if conn.length is not None and conn.length > self._client.max_body_bytes:
            raise UpstreamProtocolError("response body too large")
        self._status = status

    def data(self, conn: _Conn, chunk: bytes) -> None:
        # A body past ``keep_bytes`` is still read to its end (so the latency is the whole
        # answer's and the connection can be reused) but not held: memory per call stays bounded.
        self._size += len(chunk)
        client = self._client
        if self._size > client.max_body_bytes:
            raise UpstreamProtocolError("response body too large")
        if self._truncated or not self._live:
            return
        if self._size > client.keep_bytes:
            self._truncated = True
            self._chunks = []
        else:
            self._chunks.append(chunk)

    def done(self, conn: _Conn) -> None:
        if self._live:
            chunks = self._chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            resp = CandidateResponse(
                self._status, conn.model_version, body, self._size, self._truncated
            )
            self._report(resp, None)

    def fail(self, exc: Exception) -> None:
        if not self._live:
            return
        conn = self._conn
        if self._reused and isinstance(exc, ConnectionError) and not (conn and conn.got_bytes):
            # A keep-alive connection the server had already closed: retry once on a fresh one.
            self._conn = None
            self._open()
            return
        self._report(None, exc)


class CandidateClient(_Pool):
    """The candidate's pool: whole answers, bounded memory, lingering on timeouts."""

    def __init__(
        self,
        base_url: str,
        *,
        linger_s: float,
        max_body_bytes: int = 64 * 1024 * 1024,
        keep_bytes: int = 1024 * 1024,
    ):
        super().__init__(base_url, "candidate")
        self.max_body_bytes = max_body_bytes
        self.keep_bytes = keep_bytes
        self._linger_s = linger_s
        self.lingering = 0

    async def request(
        self, method: str, path_qs: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> CandidateResponse:
        """Send one request and return the whole response; the caller sets the deadline."""
        raw = [
            (name.encode("latin-1"), value.encode("utf-8", "surrogateescape"))
            for name, value in headers
            if name.lower() not in _DROP
        ]
        target = (self._prefix + path_qs).encode("utf-8", "surrogateescape")
        data = encode_request(method, target, self.host_header, raw, body, always_length=True)
        return await self.request_raw(data, method)

    async def request_raw(self, data: bytes, method: str) -> CandidateResponse:
        """Send an already-encoded request (see :func:`encode_request`)."""
        future: asyncio.Future[CandidateResponse] = asyncio.get_running_loop().create_future()
        call = _AwaitedCall(self, data, method, future)
        call.start()
        try:
            return await future
        except asyncio.CancelledError:
            call.abandon()
            raise

    def _linger(self, conn: _Conn) -> None:
        """The caller gave up (deadline or shutdown): let the answer drain, then reuse or close."""
        if not conn.busy or conn.closing or conn.lingering is not None:
            return
        self.lingering += 1
        loop = asyncio.get_running_loop()
        conn.lingering = loop.call_later(self._linger_s, conn.abort)

    def _stop_lingering(self, conn: _Conn) -> None:
        if conn.lingering is not None:
            conn.lingering.cancel()
            conn.lingering = None
            self.lingering -= 1

    def _release(self, conn: _Conn) -> None:
        self._stop_lingering(conn)
        super()._release(conn)

    def _forget(self, conn: _Conn) -> None:
        self._stop_lingering(conn)
        super()._forget(conn)


class _AwaitedCall(CandidateCall):
    """A :class:`CandidateCall` whose result a coroutine awaits."""

    __slots__ = ("_future",)

    def __init__(
        self,
        client: CandidateClient,
        data: bytes,
        method: str,
        future: asyncio.Future[CandidateResponse],
    ) -> None:
        super().__init__(client, data, method)
        self._future = future

    def finished(self, resp: CandidateResponse | None, exc: Exception | None) -> None:
        if self._future.done():
            return
        if resp is not None:
            self._future.set_result(resp)
        else:
            self._future.set_exception(exc or ConnectionError("candidate call failed"))


# --- production -------------------------------------------------------------------------------


class ProductionResponse:
    """Production's answer: the head at once, the body whole (small) or as a stream (large).

    ``body`` is set when the whole body arrived before the head was handed over (every response
    of at most ``inline_bytes`` with a ``Content-Length``); otherwise read it with
    :meth:`read_chunk` until it returns ``b""``.
    """

    __slots__ = (
        "_chunks",
        "_conn",
        "_error",
        "_inline",
        "_pending",
        "_waiter",
        "body",
        "chunked",
        "done_flag",
        "inline",
        "length",
        "lines",
        "model_version",
        "reason",
        "status",
    )

    def __init__(self, waiter: asyncio.Future[None], inline: int) -> None:
        self._waiter: asyncio.Future[None] | None = waiter
        self._inline = inline
        self._chunks: deque[bytes] = deque()
        self._pending = 0
        self._conn: _Conn | None = None
        self._error: Exception | None = None
        self.status = 0
        self.reason = b""
        self.lines: list[bytes] = []
        self.length: int | None = None
        self.chunked = False
        self.model_version: str | None = None
        self.body: bytes | None = None
        self.done_flag = False
        self.inline = False

    # --- _Sink (called by the connection's parser) --------------------------------------------

    def head(self, conn: _Conn, status: int, reason: bytes, lines: list[bytes]) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.lines = lines
        self.length = conn.length
        self.chunked = conn.chunked
        self.model_version = conn.model_version
        if not conn.busy:  # no body follows (HEAD, 204, 304, Content-Length: 0)
            self.body = b""
            self._wake()
        elif conn.length is not None and conn.length <= self._inline:
            self.inline = True  # small: hand it over whole, in done()
        else:
            self._wake()  # stream it: the caller starts writing at once

    def data(self, conn: _Conn, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._pending += len(chunk)
        if self.inline:
            return
        self._wake()
        if self._pending >= _HIGH_WATER and conn.transport is not None:
            conn.transport.pause_reading()

    def done(self, conn: _Conn) -> None:
        self.done_flag = True
        self._conn = None
        if self.inline:
            chunks = self._chunks
            self.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._pending = 0
        self._wake()

    def fail(self, exc: Exception) -> None:
        self._error = exc
        self._conn = None
        self._wake(exc)

    # --- the caller's side --------------------------------------------------------------------

    def _wake(self, exc: Exception | None = None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def read_chunk(self) -> bytes:
        """The next piece of a streamed body; ``b""`` at its end. Raises what broke it off."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._pending -= len(chunk)
                conn = self._conn
                if (
                    conn is not None
                    and self._pending < _HIGH_WATER // 2
                    and conn.transport is not None
                    and not conn.closing
                ):
                    conn.transport.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self.done_flag:
                return b""
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            await waiter

    def abandon(self) -> None:
        """The caller stops reading (the client went away): the connection cannot be reused."""
        conn, self._conn = self._conn, None
        if conn is not None and not self.done_flag:
            conn.abort()


class ProductionClient(_Pool):
    """Production's pool: at most ``limit`` connections; requests beyond it wait for one."""

    def __init__(self, base_url: str, *, limit: int, timeout_s: float, inline_bytes: int):
        super().__init__(base_url, "production")
        self._limit = limit
        self._timeout_s = timeout_s
        self._inline = inline_bytes
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._connecting = 0

    async def request(self, data: bytes, method: str) -> ProductionResponse:
        """Send an encoded request; return once the head (and a small body) is in.

        Raises :class:`UpstreamTimeout` when production is silent for longer than the timeout,
        ``OSError`` when it cannot be reached or breaks off before the head.
        """
        head = method == "HEAD"
        reused = self._idle_conn()
        if reused is not None:
            try:
                return await self._exchange(reused, data, head)
            except ConnectionError:
                # The server closed this kept-alive connection before answering (its idle
                # timeout crossed our send): retry once on a fresh one, as any HTTP client does.
                if reused.got_bytes:
                    raise
        conn = await self._new_conn()
        return await self._exchange(conn, data, head)

    async def _new_conn(self) -> _Conn:
        while len(self._all) + self._connecting >= self._limit:
            idle = self._idle_conn()
            if idle is not None:
                return idle
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        idle = self._idle_conn()
        if idle is not None:
            return idle
        self._connecting += 1
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._connect()
        except TimeoutError as exc:
            raise UpstreamTimeout("connect timed out") from exc
        finally:
            self._connecting -= 1

    async def _exchange(self, conn: _Conn, data: bytes, head: bool) -> ProductionResponse:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        resp = ProductionResponse(waiter, self._inline)
        resp._conn = conn
        conn.last_rx = loop.time()
        conn.send(data, head, resp)
        if conn.watchdog is None:
            conn.watchdog = loop.call_at(conn.last_rx + self._timeout_s, self._check_timeout, conn)
        try:
            await waiter
        except asyncio.CancelledError:
            resp.abandon()
            raise
        return resp

    def _check_timeout(self, conn: _Conn) -> None:
        """Fires ``timeout_s`` after the last byte; re-arms while bytes keep coming.

        One timer per connection, not per request: it is left running when a response ends, and
        the next request on the connection only moves ``last_rx``. When it fires on a connection
        with no response under way it simply stops; the next request arms it again.
        """
        conn.watchdog = None
        if conn._sink is None or conn.closing:
            return
        loop = asyncio.get_running_loop()
        idle_until = conn.last_rx + self._timeout_s
        if loop.time() < idle_until:
            conn.watchdog = loop.call_at(idle_until, self._check_timeout, conn)
            return
        conn._fail(UpstreamTimeout(f"no data for {self._timeout_s:g} s"))

    def _release(self, conn: _Conn) -> None:
        super()._release(conn)
        self._wake_one()

    def _forget(self, conn: _Conn) -> None:
        if conn.watchdog is not None:
            conn.watchdog.cancel()
            conn.watchdog = None
        super()._forget(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
