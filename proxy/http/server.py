"""The data port's HTTP/1.1 server: llhttp (through httptools) on an asyncio ``Protocol``.

The proxy sits on production's critical path, so its server does only what a reverse proxy must:
parse requests strictly (llhttp refuses ambiguous framing — ``Content-Length`` with
``Transfer-Encoding``, duplicate lengths, bad chunk sizes, obsolete line folding — which is what
keeps request smuggling out; trailers are read and dropped, and a chunked HTTP/1.0 request is
refused), bound everything a client controls (head size, header count, target length, body size,
the time to send a head or a body, connections at once, request bytes held across the port), answer
``Expect: 100-continue``, and hand each complete request to one handler coroutine, in order, per
connection.

Memory stays bounded whatever a client does: reading pauses while a connection has
:data:`PIPELINE_MAX` requests or :data:`PIPELINE_MAX_BYTES` of bodies queued, and the next queued
request is taken only once the client has read the previous answer (write back-pressure), so a
client that pipelines without reading stops the proxy reading it.

The handler writes the response itself through :meth:`Connection.write` and waits on
:meth:`Connection.drain` when the client reads slower than production answers. A client that
goes away is routine: writes become no-ops and the handler sees :attr:`Connection.closed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import httptools

from proxy.http.body import HIGH_WATER, STREAM_BODY_BYTES, BodyStream
from proxy.http.flow import FlowControl
from proxy.http.message import Limits, Message, Refusal, Request

__all__ = ["PIPELINE_MAX", "PIPELINE_MAX_BYTES", "Connection", "Server"]

log = logging.getLogger("shadowtee.proxy")

PIPELINE_MAX = 8  # queued requests per connection before reading pauses
PIPELINE_MAX_BYTES = 1024 * 1024  # queued body bytes per connection before reading pauses
_DISCARD_MAX = 8 * 1024 * 1024  # body bytes read and dropped after a refusal, before closing

Handler = Callable[[Request, "Connection"], Awaitable[bool]]


class _Refused(Exception):
    """Carries a :class:`Refusal` out of a parser callback; never leaves this module."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.text)
        self.refusal = refusal


class Connection(asyncio.Protocol):
    """One client connection: parse, queue, hand requests to the handler one at a time."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Request | Refusal] = deque()
        self._queued_bytes = 0  # body bytes of the requests in the queue
        self._stop_reading = False  # a refusal is queued, or an upgrade: reading never resumes
        self._continue_due = False  # the message being read waits for a 100 Continue
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self._msg = Message()
        self._head_bytes = 0  # bytes fed since the current head began
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
        self.flow = FlowControl(self.transport)  # type: ignore[arg-type]
        server = self._server
        self._loop = server.loop or asyncio.get_running_loop()
        server.connections.add(self)
        if len(server.connections) > self._limits.max_connections:
            server.on_refused(503)
            self.write(Refusal(503, "too many connections").response())
            self.close()
            return
        self._set_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._server.connections.discard(self)
        for timer in (self._idle_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._release(self._queued_bytes + self._msg.body_size)
        gone = ConnectionResetError("the client went away")
        for stream in [
            self._msg.stream,
            *(r.stream for r in self._queue if isinstance(r, Request)),
        ]:
            if stream is not None:
                self._release(stream.fail(gone))
        self._queue.clear()
        self._queued_bytes = 0
        self._msg = Message()
        if self.flow is not None:
            self.flow.connection_lost()

    def pause_writing(self) -> None:
        if self.flow is not None:
            self.flow.pause_writing()

    def resume_writing(self) -> None:
        if self.flow is not None:
            self.flow.resume_writing()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._body_due is None:  # a head is (or may be) on its way
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
            if self._msg.in_head and self._head_bytes > self._limits.max_head_bytes:
                raise _Refused(Refusal(431, "request head too large"))
        except httptools.HttpParserUpgrade:
            # The upgrade was ignored (RFC 9110 §7.8): the request is answered over HTTP/1.1
            # and the connection closes after it, since the parser stops at this point.
            self._stop_reading = True
            self._update_reading()
        except _Refused as exc:
            self._refuse(exc.refusal)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.refusal)
            else:
                self._refuse(Refusal(400, f"bad request: {exc}"))

    def eof_received(self) -> bool | None:
        # The client half-closed: finish what is queued, then close.
        self._eof = True
        return self._task is not None

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._msg = Message()

    def on_url(self, url: bytes) -> None:
        msg = self._msg
        msg.target += url
        if len(msg.target) > self._limits.max_target_bytes:
            raise _Refused(Refusal(414, "request target too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        msg = self._msg
        if not msg.in_head:
            return  # a trailer: read and dropped, never turned into a header
        headers = msg.headers
        headers.append((name, value))
        limits = self._limits
        size = len(name) + len(value)
        msg.fields_size += size
        if size > limits.max_field_bytes or msg.fields_size > limits.max_head_bytes:
            raise _Refused(Refusal(431, "request header fields too large"))
        if len(headers) > limits.max_headers:
            raise _Refused(Refusal(431, "too many request headers"))
        if len(name) == 10 and name.lower() == b"connection":
            msg.connection = value if msg.connection is None else msg.connection + b"," + value

    def on_headers_complete(self) -> None:
        msg = self._msg
        msg.in_head = False
        self._head_bytes = 0
        parser = self._parser
        if parser.get_method() == b"CONNECT":
            raise _Refused(Refusal(501, "CONNECT is not supported"))
        limits = self._limits
        length: int | None = None
        expect: bytes | None = None
        has_body = upgrade = chunked = False
        for name, value in msg.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = int(value)
                has_body = length > 0
            elif lowered == b"transfer-encoding":
                has_body = chunked = True
            elif lowered == b"expect":
                expect = value.lower()
            elif lowered == b"upgrade":
                upgrade = True
        if chunked and parser.get_http_version() != "1.1":
            # RFC 9112 §6.1: HTTP/1.0 has no chunked coding; a 1.0 peer framing a body with it
            # is what request smuggling is made of.
            raise _Refused(Refusal(400, "Transfer-Encoding in an HTTP/1.0 request"))
        if upgrade and has_body and b"upgrade" in (msg.connection or b"").lower():
            # llhttp hands everything after an upgrade request's head over as the new protocol,
            # so its body would be lost: refuse rather than forward a truncated request.
            raise _Refused(Refusal(501, "an upgrade request with a body is not supported"))
        if length is not None and length > limits.max_body_bytes:
            refusal = Refusal(413, f"request body over the limit of {limits.max_body_bytes} bytes")
            if expect is not None:
                raise _Refused(refusal)  # the client waits for a go-ahead: none comes, close
            self._refuse_body(refusal)
            return
        if expect is not None:
            if expect != b"100-continue":
                raise _Refused(Refusal(417, "only Expect: 100-continue is supported"))
            if has_body and parser.get_http_version() == "1.1":
                # The go-ahead is an answer too: after every answer before it, never inside one.
                self._continue_due = True
                if self._task is None and not self._queue:
                    self._send_continue()
        if has_body:
            self._body_close_only = False
            self._start_body_clock()
        if length is not None and length > STREAM_BODY_BYTES:
            # A large body goes to the handler as it arrives, so one that is not teed is
            # forwarded without ever being held whole.
            msg.stream = BodyStream(length, self._taken)
            self._enqueue(
                Request(
                    parser.get_method().decode("ascii"),
                    msg.target,
                    msg.headers,
                    b"",
                    parser.get_http_version() == "1.1",
                    parser.should_keep_alive(),
                    msg.connection,
                    msg.stream,
                )
            )

    def on_body(self, body: bytes) -> None:
        self._continue_due = False  # the client did not wait for it
        msg = self._msg
        if msg.discarding:
            self._discard_left -= len(body)
            if self._discard_left <= 0:
                self.close()
            return
        size = len(body)
        server = self._server
        stream = msg.stream
        if stream is not None:  # bounded by HIGH_WATER per connection, not by the port's cap
            if stream.feed(body):
                server.buffered += size
            if stream.buffered >= HIGH_WATER:
                self._update_reading()
            return
        limits = self._limits
        if msg.body_size + size > limits.max_body_bytes:
            self._drop_body()
            limit = limits.max_body_bytes
            self._refuse_body(Refusal(413, f"request body over the limit of {limit} bytes"))
            return
        if server.buffered + size > limits.max_buffered_bytes:
            self._drop_body()
            self._refuse_body(Refusal(503, "the proxy holds too many request bytes; retry"))
            return
        msg.body_size += size
        server.buffered += size
        msg.body.append(body)

    def on_message_complete(self) -> None:
        self._body_due = None
        self._continue_due = False
        msg = self._msg
        if msg.discarding:
            if self._task is None:
                self.close()
            return
        if msg.stream is not None:
            msg.stream.end()  # its request is queued already
            msg.stream = None
            return
        parser = self._parser
        request = Request(
            parser.get_method().decode("ascii"),
            msg.target,
            msg.headers,
            msg.take_body(),
            parser.get_http_version() == "1.1",
            parser.should_keep_alive() and not parser.should_upgrade(),
            msg.connection,
        )
        self._queued_bytes += msg.body_size
        msg.body_size = 0
        self._enqueue(request)

    # --- dispatch -----------------------------------------------------------------------------

    def _enqueue(self, item: Request | Refusal) -> None:
        self._queue.append(item)
        # The idle timer is left running: while a request is being answered it finds the
        # connection busy and stops, and _set_idle arms it again afterwards.
        if self._task is None:
            self._task = task = self._loop.create_task(self._run())
            tasks = self._server.tasks
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        else:
            self._update_reading()

    async def _run(self) -> None:
        server = self._server
        queue = self._queue
        try:
            while queue and not self.closed:
                if self._continue_due and queue[0] is self._streamed_request():
                    self._send_continue()
                item = queue.popleft()
                if isinstance(item, Refusal):
                    self.write(item.response())
                    self.close()
                    return
                size = len(item.body)
                self._queued_bytes -= size
                try:
                    keep = await server.handler(item, self)
                except Exception:
                    log.exception("proxy handler failed")
                    self.abort()
                    return
                finally:
                    server.buffered -= size
                    left = item.stream is not None and self._drop_unread(item.stream)
                if left:
                    if not self.closed and self._msg.stream is item.stream:
                        self._discard_rest()  # production answered before taking it all
                    else:
                        self.close()
                    return
                if not keep or server.draining:
                    self.close()
                    return
                # Write back-pressure: the next answer waits until the client has taken this one,
                # and reading stays paused meanwhile once the queue is full.
                flow = self.flow
                if flow is not None:
                    if flow.write_paused and not self.closed:
                        await flow.drain()
                    if flow.read_paused:
                        self._update_reading()
        finally:
            self._task = None
            if self._continue_due:  # every earlier answer is out: the waiting client may go on
                self._send_continue()
            if self._eof:
                self.close()
            elif not self.closed:
                self._set_idle()

    def _refuse(self, refusal: Refusal) -> None:
        """A request the proxy will not forward: answer after what is queued, then close."""
        self._server.on_refused(refusal.status)
        self._body_due = None
        self._drop_body()
        stream = self._msg.stream
        if stream is not None:
            # Its request is with the handler already, which may be answering it: no refusal
            # can be written in order any more. Production's side is closed by the handler.
            self._release(stream.fail(ConnectionAbortedError(f"client body: {refusal.text}")))
            self.abort()
            return
        if self._task is not None:
            self._queue.append(refusal)
            self._stop_reading = True
            self._update_reading()
            return
        self.write(refusal.response())
        self.close()

    def _refuse_body(self, refusal: Refusal) -> None:
        """Refuse a request whose body is on its way: answer now, then read and drop what the
        client is still sending (bounded) before closing, so the answer is not lost to a reset."""
        if self._task is not None:
            raise _Refused(refusal)
        self._server.on_refused(refusal.status)
        self._msg.discarding = True
        self._discard_left = _DISCARD_MAX
        self.write(refusal.response())
        if self._body_due is None:  # refused at the head: give the body its time, then close
            self._body_close_only = True
            self._start_body_clock()

    def _send_continue(self) -> None:
        self._continue_due = False
        self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _streamed_request(self) -> Request | None:
        """The queued request whose body is the one being read, if any."""
        stream = self._msg.stream
        if stream is None:
            return None
        for item in self._queue:
            if isinstance(item, Request) and item.stream is stream:
                return item
        return None

    def _discard_rest(self) -> None:
        """Read and drop the rest of the body being streamed (bounded), then close: closing
        with the client's bytes unread would reset the connection and could lose the answer."""
        msg = self._msg
        msg.stream = None
        msg.discarding = True
        self._discard_left = _DISCARD_MAX
        self._body_close_only = True
        self._update_reading()

    def _drop_unread(self, stream: BodyStream | None) -> bool:
        """Drop what is left of a streamed body after its handler; whether anything was."""
        if stream is None or stream.finished:
            return False
        self._release(stream.fail(ConnectionAbortedError("not forwarded")))
        return True

    def _drop_body(self) -> None:
        msg = self._msg
        self._release(msg.body_size)
        msg.body = []
        msg.body_size = 0

    def _release(self, size: int) -> None:
        self._server.buffered -= size

    def _taken(self, size: int) -> None:
        """The handler took ``size`` bytes of a streamed body."""
        self._release(size)
        stream = self._msg.stream
        if stream is not None and stream.buffered < HIGH_WATER // 2:
            self._update_reading()

    def _update_reading(self) -> None:
        """Read while nothing is full: the queue, its bytes, a streamed body's buffer."""
        flow = self.flow
        if flow is None:
            return
        stream = self._msg.stream
        if (
            self._stop_reading
            or len(self._queue) >= PIPELINE_MAX
            or self._queued_bytes >= PIPELINE_MAX_BYTES
            or (stream is not None and stream.buffered >= HIGH_WATER)
        ):
            flow.pause_reading()
        else:
            flow.resume_reading()

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
            self._refuse(Refusal(408, "request body timed out"))

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
        if self.flow is not None and not self.closed:
            await self.flow.drain()

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
        self,
        handler: Handler,
        limits: Limits,
        on_body_timeout: Callable[[], None],
        on_refused: Callable[[int], None] | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.handler = handler
        # The loop whose clock and timers connections use: the running one, or a test's fake.
        self.loop = loop
        self.limits = limits
        self._on_body_timeout = on_body_timeout
        self._on_refused = on_refused
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        self.buffered = 0  # request body bytes held across the port
        self._server: asyncio.Server | None = None

    def on_refused(self, status: int) -> None:
        if status == 408:
            self._on_body_timeout()
        if self._on_refused is not None:
            self._on_refused(status)

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
