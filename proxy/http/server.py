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
from typing import TYPE_CHECKING

import httptools

from proxy.http.body import HIGH_WATER
from proxy.http.closing import LINGER_S, Closing
from proxy.http.flow import FlowControl
from proxy.http.message import Message, Refusal, Request
from proxy.http.parse import DISCARD_MAX, Refused, RequestParsing

if TYPE_CHECKING:
    from proxy.http.listener import Server

__all__ = ["LINGER_S", "PIPELINE_MAX", "PIPELINE_MAX_BYTES", "Connection"]

log = logging.getLogger("shadowtee.proxy")

PIPELINE_MAX = 8  # queued requests per connection before reading pauses
PIPELINE_MAX_BYTES = 1024 * 1024  # queued body bytes per connection before reading pauses


class Connection(Closing, RequestParsing, asyncio.Protocol):
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
        self._lingering = False  # refused and closing: what the client still sends is dropped
        self._cut_gracefully = False  # the answer under way frames itself (HTTP/1.1): see abort
        self._linger_timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None  # abort(): delivering, then a reset
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
        for timer in (self._idle_timer, self._body_timer, self._linger_timer, self._flushing):
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
        if self._lingering:  # answered and closing: drop what the client still sends (bounded)
            self._discard_left -= len(data)
            if self._discard_left <= 0:
                self._reset()
            return
        if self.closed:
            return
        if self._body_due is None:  # a head is (or may be) on its way
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
            if self._msg.in_head and self._head_bytes > self._limits.max_head_bytes:
                raise Refused(Refusal(431, "request head too large"))
        except httptools.HttpParserUpgrade:
            # The upgrade was ignored (RFC 9110 §7.8): the request is answered over HTTP/1.1
            # and the connection closes after it, since the parser stops at this point.
            self._stop_reading = True
            self._update_reading()
        except Refused as exc:
            self._refuse(exc.refusal)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, Refused):
                self._refuse(cause.refusal)
            else:
                self._refuse(Refusal(400, f"bad request: {exc}"))

    def eof_received(self) -> bool | None:
        if self._lingering:
            return False  # the client has read its refusal and is done: close
        self._eof = True
        stream = self._msg.stream
        if stream is not None:
            # A body being forwarded will never be whole: production's connection is closed at
            # once (by the handler, whose body read fails), not left with half a request.
            self._release(stream.fail(ConnectionResetError("the client closed mid-body")))
            return False
        # The client half-closed: finish what is queued, then close.
        return self._task is not None

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
                    self._close_lingering()
                    return
                size = len(item.body)
                self._queued_bytes -= size
                self._cut_gracefully = item.http11
                try:
                    keep = await server.handler(item, self)
                except Exception:
                    if item.stream is None or not item.stream.failed:
                        log.exception("proxy handler failed")
                    # else: the client's body broke off (it hung up): routine, no traceback
                    self._reset()
                    return
                finally:
                    # What the handler held: a body that came whole, or one read whole from its
                    # stream (for the tee), answered or broken off.
                    stream = item.stream
                    server.buffered -= size if stream is None else size + stream.held_whole
                    left = stream is not None and self._drop_unread(stream)
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
            self._reset()
            return
        if self._task is not None:
            self._queue.append(refusal)
            self._stop_reading = True
            self._update_reading()
            return
        self.write(refusal.response())
        self._close_lingering()

    def _refuse_body(self, refusal: Refusal) -> None:
        """Refuse a request whose body is on its way: answer now, then read and drop what the
        client is still sending (bounded) before closing, so the answer is not lost to a reset."""
        if self._task is not None:
            raise Refused(refusal)
        self._server.on_refused(refusal.status)
        self._msg.discarding = True
        self._discard_left = DISCARD_MAX
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

    def _release(self, size: int) -> None:
        self._server.buffered -= size

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
