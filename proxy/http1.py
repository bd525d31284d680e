"""The data port's HTTP/1.1 server: llhttp (through httptools) on an asyncio ``Protocol``.

The proxy sits on production's critical path, so its server does only what a reverse proxy must:
parse requests strictly (llhttp refuses ambiguous framing — ``Content-Length`` with
``Transfer-Encoding``, duplicate lengths, bad chunk sizes, obsolete line folding — which is what
keeps request smuggling out), bound everything a client controls (head size, header count,
target length, body size, the time to send a head or a body), answer ``Expect: 100-continue``,
and hand each complete request to one handler coroutine, in order, per connection.

The handler writes the response itself through :meth:`Connection.write` and waits on
:meth:`Connection.drain` when the client reads slower than production answers. A client that
goes away is routine: writes become no-ops and the handler sees :attr:`Connection.closed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote

import httptools

__all__ = ["Connection", "Limits", "Request", "Server", "simple_response"]

log = logging.getLogger("shadowtee.proxy")

_PIPELINE_MAX = 8  # queued requests per connection before reading pauses
_DISCARD_MAX = 8 * 1024 * 1024  # body bytes read and dropped after a refusal, before closing


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int
    keepalive_timeout_s: float  # idle, and the most time a client may take to send a head
    body_timeout_s: float  # the most time a client may take to send a body
    max_target_bytes: int = 16 * 1024
    max_head_bytes: int = 64 * 1024
    max_field_bytes: int = 16 * 1024  # one header line
    max_headers: int = 128


class Request:
    """One parsed request: raw header pairs and the whole body, as bytes."""

    __slots__ = ("body", "connection", "headers", "http11", "keep_alive", "method", "target")

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        http11: bool,
        keep_alive: bool,
        connection: bytes | None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.http11 = http11
        self.keep_alive = keep_alive
        self.connection = connection  # the Connection header's value, when there was one

    @property
    def path(self) -> str:
        """The target's path, without the query, percent-decoded, as text."""
        path = self.target.split(b"?", 1)[0].decode("utf-8", "surrogateescape")
        return unquote(path, errors="surrogateescape") if "%" in path else path

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or ``None``."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def simple_response(status: int, text: str, *, close: bool = True) -> bytes:
    """A short plain-text response the proxy itself answers with (errors, 100-continue aside)."""
    body = text.encode()
    reason = HTTPStatus(status).phrase.encode()
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
        % (
            status,
            reason,
            len(body),
        )
    )
    return head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body


Handler = Callable[[Request, "Connection"], Awaitable[bool]]


class _Refuse(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class Connection(asyncio.Protocol):
    """One client connection: parse, queue, hand requests to the handler one at a time."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._limits = server.limits
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Request | _Refuse] = deque()
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self._write_paused: asyncio.Future[None] | None = None
        self._reading_paused = False
        # the message being parsed
        self._in_head = False
        self._head_bytes = 0
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._fields_size = 0
        self._connection: bytes | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._discarding = False  # refused mid-message: read and drop the rest, then close
        self._discard_left = 0
        self._eof = False
        # A body on its way must be complete by ``_body_due``; what happens then is a 408, or
        # just closing for a refused body that is being read and dropped. The timer is lazy:
        # armed when a body starts and none is pending, it re-arms itself for the body of the
        # moment, so a keep-alive connection does not create and cancel a timer per request.
        self._body_due: float | None = None
        self._body_close_only = False
        self._body_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self._server.connections.add(self)
        self._set_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._server.connections.discard(self)
        for timer in (self._idle_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._wake_writer()

    def pause_writing(self) -> None:
        if self._write_paused is None:
            self._write_paused = self._loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_writer(self) -> None:
        waiter, self._write_paused = self._write_paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._body_due is None:  # a head is (or may be) on its way
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
            if self._in_head and self._head_bytes > self._limits.max_head_bytes:
                raise _Refuse(431, "request head too large")
        except httptools.HttpParserUpgrade:
            # The upgrade was ignored (RFC 9110 §7.8): the request is answered over HTTP/1.1
            # and the connection closes after it, since the parser stops at this point.
            if self.transport is not None:
                self.transport.pause_reading()
        except _Refuse as refusal:
            self._refuse(refusal)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refuse):
                self._refuse(cause)
            else:
                self._refuse(_Refuse(400, f"bad request: {exc}"))

    def eof_received(self) -> bool | None:
        # The client half-closed: finish what is queued, then close.
        self._eof = True
        return self._task is not None

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._target = b""
        self._headers = []
        self._fields_size = 0
        self._connection = None
        self._body = []
        self._body_size = 0
        self._discarding = False

    def on_url(self, url: bytes) -> None:
        self._target += url
        if len(self._target) > self._limits.max_target_bytes:
            raise _Refuse(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name, value))
        limits = self._limits
        size = len(name) + len(value)
        self._fields_size += size
        if size > limits.max_field_bytes or self._fields_size > limits.max_head_bytes:
            raise _Refuse(431, "request header fields too large")
        if len(headers) > limits.max_headers:
            raise _Refuse(431, "too many request headers")
        if len(name) == 10 and name.lower() == b"connection":
            self._connection = (
                value if self._connection is None else self._connection + b"," + value
            )

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._parser.get_method() == b"CONNECT":
            raise _Refuse(501, "CONNECT is not supported")
        limits = self._limits
        length: int | None = None
        expect: bytes | None = None
        has_body = upgrade = False
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = int(value)
                has_body = length > 0
            elif lowered == b"transfer-encoding":
                has_body = True
            elif lowered == b"expect":
                expect = value.lower()
            elif lowered == b"upgrade":
                upgrade = True
        if upgrade and has_body and b"upgrade" in (self._connection or b"").lower():
            # llhttp hands everything after an upgrade request's head over as the new protocol,
            # so its body would be lost: refuse rather than forward a truncated request.
            raise _Refuse(501, "an upgrade request with a body is not supported")
        if length is not None and length > limits.max_body_bytes:
            refusal = _Refuse(413, f"request body over the limit of {limits.max_body_bytes} bytes")
            if expect is not None:
                raise refusal  # the client waits for a go-ahead: no body comes, close at once
            self._refuse_body(refusal)
            return
        if expect is not None:
            if expect != b"100-continue":
                raise _Refuse(417, "only Expect: 100-continue is supported")
            if has_body and self._parser.get_http_version() == "1.1" and self.transport:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if has_body:
            self._body_close_only = False
            self._start_body_clock()

    def on_body(self, body: bytes) -> None:
        if self._discarding:
            self._discard_left -= len(body)
            if self._discard_left <= 0:
                self.close()
            return
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            self._body = []
            limit = self._limits.max_body_bytes
            self._refuse_body(_Refuse(413, f"request body over the limit of {limit} bytes"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._body_due = None
        if self._discarding:
            if self._task is None:
                self.close()
            return
        parser = self._parser
        body = self._body
        request = Request(
            parser.get_method().decode("ascii"),
            self._target,
            self._headers,
            body[0] if len(body) == 1 else b"".join(body),
            parser.get_http_version() == "1.1",
            parser.should_keep_alive() and not parser.should_upgrade(),
            self._connection,
        )
        self._body = []
        self._enqueue(request)

    # --- dispatch -----------------------------------------------------------------------------

    def _enqueue(self, item: Request | _Refuse) -> None:
        self._queue.append(item)
        # The idle timer is left running: while a request is being answered it finds the
        # connection busy and stops, and _set_idle arms it again afterwards.
        if self._task is None:
            self._task = task = self._loop.create_task(self._run())
            tasks = self._server.tasks
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif len(self._queue) >= _PIPELINE_MAX and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True

    async def _run(self) -> None:
        server = self._server
        queue = self._queue
        try:
            while queue and not self.closed:
                item = queue.popleft()
                if self._reading_paused and len(queue) < _PIPELINE_MAX // 2:
                    self._reading_paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                if isinstance(item, _Refuse):
                    self.write(simple_response(item.status, item.text + "\n"))
                    self.close()
                    return
                try:
                    keep = await server.handler(item, self)
                except Exception:
                    log.exception("proxy handler failed")
                    self.abort()
                    return
                if not keep or server.draining:
                    self.close()
                    return
        finally:
            self._task = None
            if self._eof:
                self.close()
            elif not self.closed:
                self._set_idle()

    def _refuse(self, refusal: _Refuse) -> None:
        """A request the proxy will not forward: answer after what is queued, then close."""
        if refusal.status == 408:
            self._server.on_body_timeout()
        self._body_due = None
        if self._task is not None:
            self._queue.append(refusal)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self.write(simple_response(refusal.status, refusal.text + "\n"))
        self.close()

    def _refuse_body(self, refusal: _Refuse) -> None:
        """Refuse a request whose body is on its way: answer now, then read and drop what the
        client is still sending (bounded) before closing, so the answer is not lost to a reset."""
        if self._task is not None:
            raise refusal
        self._discarding = True
        self._discard_left = _DISCARD_MAX
        self.write(simple_response(refusal.status, refusal.text + "\n"))
        if self._body_due is None:  # refused at the head: give the body its time, then close
            self._body_close_only = True
            self._start_body_clock()

    def _start_body_clock(self) -> None:
        self._body_due = self._loop.time() + self._limits.body_timeout_s
        if self._body_timer is None:
            self._body_timer = self._loop.call_at(self._body_due, self._body_check)

    def _body_check(self) -> None:
        self._body_timer = None
        due = self._body_due
        if due is None or self.closed:
            return
        if self._loop.time() < due:
            self._body_timer = self._loop.call_at(due, self._body_check)
            return
        self._body_due = None
        if self._body_close_only:
            self.close()
        else:
            self._refuse(_Refuse(408, "request body timed out"))

    def _set_idle(self) -> None:
        """Start the keep-alive clock: a client has this long to send its next complete head."""
        if self._server.draining:
            self.close()
            return
        self._idle_since = self._loop.time()
        if self._idle_timer is None:
            self._idle_timer = self._loop.call_at(
                self._idle_since + self._limits.keepalive_timeout_s, self._idle_check
            )

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self.closed or self._task is not None or self._queue:
            return
        if self._body_due is not None:  # a body is on its way: its own clock runs
            return
        deadline = self._idle_since + self._limits.keepalive_timeout_s
        if self._loop.time() >= deadline:
            self.close()  # no answer: the client sent nothing worth one in time
        else:
            self._idle_timer = self._loop.call_at(deadline, self._idle_check)

    # --- the handler's side -------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No request of this connection is being answered (a half-sent one does not count)."""
        return self._task is None and not self._queue

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the client's socket buffer is full."""
        waiter = self._write_paused
        if waiter is not None:
            await waiter

    def close(self) -> None:
        """Close once what was written is flushed."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection at once (production broke off after the head was sent)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Server:
    """The listening socket, its connections, and an orderly close."""

    def __init__(
        self, handler: Handler, limits: Limits, on_body_timeout: Callable[[], None]
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.on_body_timeout = on_body_timeout
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), host, port, backlog=1024, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def shutdown(self, timeout_s: float) -> None:
        """Stop accepting, close idle connections, let busy ones finish (bounded), cut the rest."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            for conn in list(self.connections):
                if conn.idle:
                    conn.close()
            if (not self.connections and not self.tasks) or loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        for task in list(self.tasks):
            task.cancel("shadowtee proxy shutting down")
        if self.tasks:
            await asyncio.wait(set(self.tasks))
        if self._server is not None:
            await self._server.wait_closed()
