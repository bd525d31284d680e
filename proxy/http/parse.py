"""The request side of a server connection: llhttp's callbacks, one message at a time.

:class:`RequestParsing` is the part of :class:`~proxy.http.server.Connection` that llhttp calls
back while it parses: it fills the per-message :class:`~proxy.http.message.Message`, applies the
limits on targets, headers and bodies, drops trailers, refuses what a proxy must not forward,
and hands complete requests (or, for a large body, the head with a
:class:`~proxy.http.body.BodyStream`) to the connection's queue. A refusal leaves a callback as
:class:`Refused`, the one exception here, and becomes a :class:`~proxy.http.message.Refusal`
record in the queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import httptools

from proxy.http.body import HIGH_WATER, STREAM_BODY_BYTES, BodyStream
from proxy.http.message import Limits, Message, Refusal, Request

if TYPE_CHECKING:
    from proxy.http.listener import Server

__all__ = ["DISCARD_MAX", "Refused", "RequestParsing"]

_VERSIONS = frozenset({"1.0", "1.1"})
DISCARD_MAX = 8 * 1024 * 1024  # body bytes read and dropped after a refusal, before closing


class Refused(Exception):
    """Carries a :class:`Refusal` out of a parser callback to the connection."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.text)
        self.refusal = refusal


class RequestParsing:
    """llhttp's callbacks, the body bookkeeping and the clocks of a server connection (a mixin)."""

    _msg: Message
    _limits: Limits
    _parser: httptools.HttpRequestParser
    _server: Server
    _loop: asyncio.AbstractEventLoop
    _head_bytes: int
    _continue_due: bool
    _task: asyncio.Task[None] | None
    _queue: deque[Request | Refusal]
    _queued_bytes: int
    _discard_left: int
    _body_due: float | None
    _body_close_only: bool
    _body_timer: asyncio.TimerHandle | None
    _idle_since: float
    _idle_timer: asyncio.TimerHandle | None
    closed: bool

    if TYPE_CHECKING:  # the connection's side, which these callbacks drive

        def close(self) -> None: ...

        def _enqueue(self, item: Request | Refusal) -> None: ...

        def _refuse_body(self, refusal: Refusal) -> None: ...

        def _refuse(self, refusal: Refusal) -> None: ...

        def _send_continue(self) -> None: ...

        def _update_reading(self) -> None: ...

        def _release(self, size: int) -> None: ...

    def on_message_begin(self) -> None:
        self._msg = Message()

    def on_url(self, url: bytes) -> None:
        msg = self._msg
        msg.target += url
        if len(msg.target) > self._limits.max_target_bytes:
            raise Refused(Refusal(414, "request target too long"))

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
            raise Refused(Refusal(431, "request header fields too large"))
        if len(headers) > limits.max_headers:
            raise Refused(Refusal(431, "too many request headers"))
        if len(name) == 10 and name.lower() == b"connection":
            msg.connection = value if msg.connection is None else msg.connection + b"," + value

    def on_headers_complete(self) -> None:
        msg = self._msg
        msg.in_head = False
        self._head_bytes = 0
        parser = self._parser
        if parser.get_http_version() not in _VERSIONS:
            # llhttp also takes HTTP/0.9 and HTTP/2.0 request lines; this port speaks HTTP/1.x
            # (RFC 9110 §15.6.6), and what a 2.0 or 0.9 peer sends next is not HTTP/1.1 framing.
            raise Refused(Refusal(505, "HTTP version not supported: only HTTP/1.0 and HTTP/1.1"))
        if parser.get_method() == b"CONNECT":
            raise Refused(Refusal(501, "CONNECT is not supported"))
        limits = self._limits
        length: int | None = None
        expect: bytes | None = None
        has_body = upgrade = chunked = False
        names = msg.names = []
        for name, value in msg.headers:
            lowered = name.lower()
            names.append(lowered)
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
            raise Refused(Refusal(400, "Transfer-Encoding in an HTTP/1.0 request"))
        if upgrade and has_body and b"upgrade" in (msg.connection or b"").lower():
            # llhttp hands everything after an upgrade request's head over as the new protocol,
            # so its body would be lost: refuse rather than forward a truncated request.
            raise Refused(Refusal(501, "an upgrade request with a body is not supported"))
        if length is not None and length > limits.max_body_bytes:
            refusal = Refusal(413, f"request body over the limit of {limits.max_body_bytes} bytes")
            if expect is not None:
                raise Refused(refusal)  # the client waits for a go-ahead: none comes, close
            self._refuse_body(refusal)
            return
        if expect is not None:
            if expect != b"100-continue":
                raise Refused(Refusal(417, "only Expect: 100-continue is supported"))
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
                    names,
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
        if stream is not None:  # forwarded: HIGH_WATER bounds it; read whole: the port's cap
            if server.buffered + size > self._limits.max_buffered_bytes:
                self._refuse(Refusal(503, "the proxy holds too many request bytes; retry"))
                return
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
            names=msg.names,
        )
        self._queued_bytes += msg.body_size
        msg.body_size = 0
        self._enqueue(request)

    # --- body bookkeeping -------------------------------------------------------------------

    def _discard_rest(self) -> None:
        """Read and drop the rest of the body being streamed (bounded), then close: closing
        with the client's bytes unread would reset the connection and could lose the answer."""
        msg = self._msg
        msg.stream = None
        msg.discarding = True
        self._discard_left = DISCARD_MAX
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

    def _taken(self, size: int) -> None:
        """The handler took ``size`` bytes of a streamed body."""
        self._release(size)
        stream = self._msg.stream
        if stream is not None and stream.buffered < HIGH_WATER // 2:
            self._update_reading()

    def _start_body_clock(self) -> None:
        self._body_due = self._loop.time() + self._limits.body_timeout_s
        if self._body_timer is None:
            self._body_timer = self._loop.call_at(self._body_due, self._body_check)

    # --- clocks -------------------------------------------------------------------------------

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
