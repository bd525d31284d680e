"""One keep-alive connection to an upstream (production or the candidate), parsed by llhttp.

A request goes out in one ``write``; the answer is parsed by llhttp (``httptools``'
``HttpResponseParser``) with every leniency off, as the data port parses requests, and handed to
the request's :class:`Sink` as a head, body pieces and an end. On top of llhttp's checks the
connection refuses what a proxy must not pass on: a transfer coding other than ``chunked``, a
``Connection`` header naming a framing header, control bytes in the reason phrase, a ``101`` nobody
asked for, and a head over :data:`MAX_HEAD` bytes. Trailers are read and dropped.

The connection's :class:`ConnectionState` says what it may be used for, and only
:meth:`ClientConnection.is_available` connections are handed out again: a connection goes back to
its pool only when its answer is complete, nothing follows it, reading is not paused and the
answer allowed keep-alive. Anything else — bytes after an answer (after a ``HEAD``, ``204`` or
``304`` answer too), bytes with no request out, an interim answer after the final one, a broken
answer — closes it, so no byte of one exchange can become part of another.
"""

from __future__ import annotations

import asyncio

import httptools

from proxy.exceptions import UpstreamProtocolError, UpstreamTimeout
from proxy.http.answer import MAX_HEAD, NO_BODY, TRAILING, AnswerParsing
from proxy.http.exchange import ConnectionState, Owner, ResponseHead, Sink, encode_request
from proxy.http.flow import FlowControl

__all__ = [
    "MAX_HEAD",
    "ClientConnection",
    "ConnectionState",
    "Owner",
    "ResponseHead",
    "Sink",
    "encode_request",
]


class ClientConnection(AnswerParsing, asyncio.Protocol):
    """One keep-alive connection; at most one request on it at a time."""

    def __init__(
        self,
        owner: Owner,
        read_timeout_s: float | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._owner = owner
        self._transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self._loop = loop  # its clock and timers: the running loop's, or a test's fake
        self._parser = httptools.HttpResponseParser(self)
        self._state = ConnectionState.IDLE
        self._sink: Sink | None = None
        self._head_request = False
        self._request_sent = True  # the whole request is out (its body may follow the head)
        self._head = ResponseHead()
        self._reason = b""
        self._in_head = False
        self._head_size = 0  # bytes of earlier reads in which the current head did not end
        self._read_size = 0
        self._interim = False
        self._until_close = False
        self._keep = True
        self._complete = False
        self._quiet = 0  # bytes fed since the parser last called back (a head line growing)
        self._seen: bytearray | None = None  # a HEAD request's answer so far, to find its end
        self._heads = 0
        self.got_bytes = False  # a byte of the current answer arrived
        self._read_timeout_s = read_timeout_s
        self._last_progress = 0.0  # the last byte received, or request byte sent
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        paused = ", reading paused" if self.flow is not None and self.flow.read_paused else ""
        return f"<ClientConnection [{self._state.value}{paused}]>"

    # --- what a pool asks -------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    def is_idle(self) -> bool:
        return self._state is ConnectionState.IDLE

    def unsent(self) -> int:
        """Bytes of the request written to the transport that have not reached the socket."""
        transport = self._transport
        return (
            0 if transport is None or transport.is_closing() else transport.get_write_buffer_size()
        )

    def is_available(self) -> bool:
        """Idle, connected, not paused: it may carry the next request."""
        transport = self._transport
        return (
            self._state is ConnectionState.IDLE
            and transport is not None
            and not transport.is_closing()
            and self.flow is not None
            and not self.flow.read_paused
        )

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(self._transport)  # type: ignore[arg-type]
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    def pause_writing(self) -> None:
        if self.flow is not None:
            self.flow.pause_writing()

    def resume_writing(self) -> None:
        if self.flow is not None:
            self.flow.resume_writing()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost finishes the work

    def connection_lost(self, exc: Exception | None) -> None:
        was = self._state
        self._state = ConnectionState.CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.flow is not None:
            self.flow.connection_lost()
        if was is ConnectionState.ACTIVE:
            if self._until_close and not self._in_head:
                self._finish(reuse=False)  # the body ran until the close: that is its end
            else:
                self._fail(ConnectionResetError("upstream closed the connection"))
        self._owner.forget(self)

    def data_received(self, data: bytes) -> None:
        if self._state is not ConnectionState.ACTIVE:
            self.close()  # bytes nobody asked for: this connection's framing is lost
            return
        self.got_bytes = True
        if self._read_timeout_s is not None:
            self._last_progress = self._loop.time()  # type: ignore[union-attr]
        if self._seen is not None:
            self._seen += data
        self._quiet += len(data)
        self._read_size = len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("bad response: an upgrade nobody asked for"))
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if cause is TRAILING:
                self._finish(reuse=False)
            elif cause is NO_BODY:
                self._finish(reuse=self._keep and self._head_ends_input())
            else:
                self._fail(UpstreamProtocolError(f"bad response: {cause or exc}"))
            return
        if self._complete:
            self._finish(reuse=self._keep)
        elif self._in_head:
            # Counted per read, not per header: a head that spans reads is every byte of them.
            self._head_size += len(data)
            if self._head_size > MAX_HEAD:
                self._fail(UpstreamProtocolError("bad response: head too large"))
        elif self._quiet > MAX_HEAD:
            self._fail(UpstreamProtocolError("bad response: trailer line too long"))

    # --- the request's side -------------------------------------------------------------------

    def send(self, data: bytes, head_request: bool, sink: Sink, *, more: bool = False) -> None:
        """Send one request; its answer goes to ``sink``.

        With ``more``, ``data`` is only the head: send the body with :meth:`send_body` and
        :meth:`end_request`. A connection whose request was not sent whole is never reused.
        """
        if self._state is not ConnectionState.IDLE:  # the pool hands out available ones only
            raise ConnectionResetError(f"{self!r} cannot carry a request")
        assert self._transport is not None and self._loop is not None
        self._state = ConnectionState.ACTIVE
        self._sink = sink
        self._head_request = head_request
        self._request_sent = not more
        self._seen = bytearray() if head_request else None
        self._heads = 0
        self.got_bytes = False
        self._transport.write(data)
        if self._read_timeout_s is not None:
            self._last_progress = self._loop.time()
            if self._timer is None:
                self._timer = self._loop.call_at(
                    self._last_progress + self._read_timeout_s, self._check_timeout
                )

    def send_body(self, chunk: bytes) -> None:
        """More of the current request's body (a no-op once the connection is done with it)."""
        transport = self._transport
        active = self._state is ConnectionState.ACTIVE
        if active and transport is not None and not transport.is_closing():
            transport.write(chunk)
            if self._loop is not None:
                self._last_progress = self._loop.time()  # a long upload is not silence

    def end_request(self) -> None:
        self._request_sent = True

    async def drain(self) -> None:
        """Wait while the upstream's socket buffer is full."""
        if self.flow is not None and self._state is ConnectionState.ACTIVE:
            await self.flow.drain()

    def detach(self) -> None:
        """The current request's sink hears nothing more (the caller gave up on it)."""
        self._sink = None

    def pause_reading(self) -> None:
        if self.flow is not None:
            self.flow.pause_reading()

    def resume_reading(self) -> None:
        if self.flow is not None and self._state is not ConnectionState.CLOSED:
            self.flow.resume_reading()

    def close(self) -> None:
        """Cut the connection; a request still out fails."""
        if self._state is ConnectionState.ACTIVE:
            self._fail(ConnectionResetError("connection closed by the proxy"))
        self._state = ConnectionState.CLOSED
        if self._transport is not None:
            self._transport.abort()

    # --- ends -----------------------------------------------------------------------------------

    def _head_ends_input(self) -> bool:
        """Whether a HEAD answer's head is the last of what arrived (nothing trails it)."""
        seen = self._seen or b""
        end = -4
        for _ in range(self._heads):  # the interim heads, then the final one
            end = seen.find(b"\r\n\r\n", end + 4)
            if end < 0:
                return False
        return end + 4 == len(seen)

    def _finish(self, *, reuse: bool) -> None:
        sink, self._sink = self._sink, None
        self._complete = self._until_close = False
        self._seen = None
        if self._head_request:
            self._parser = httptools.HttpResponseParser(self)  # it stopped inside the head
        reuse = reuse and self._request_sent  # an early answer: the rest of the body is unsent
        if reuse and self._transport is not None and not self._transport.is_closing():
            self._state = ConnectionState.IDLE
            # Paused for the caller's sake (a slow client): the answer is complete, so nothing
            # more is due and reading resumes; any byte that now comes closes the connection.
            flow = self.flow
            if flow is not None and flow.read_paused:
                flow.resume_reading()
        else:
            self._state = ConnectionState.CLOSED
            if self._transport is not None:
                self._transport.abort()
        self._owner.release(self)
        if sink is not None:
            sink.done(self)

    def _fail(self, exc: Exception) -> None:
        sink, self._sink = self._sink, None
        self._state = ConnectionState.CLOSED
        self._complete = False
        if self._transport is not None:
            self._transport.abort()
        if sink is not None:
            sink.fail(exc)

    def _check_timeout(self) -> None:
        """Fires ``read_timeout_s`` after the last byte; re-arms while bytes keep coming.

        One timer per connection, not per request: it is left running when an answer ends, and
        the next request only moves ``_last_rx``. Time spent paused for a slow client does not
        count: production is not silent then, the proxy is not listening.
        """
        self._timer = None
        if self._state is not ConnectionState.ACTIVE or self._read_timeout_s is None:
            return
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if self.flow is not None and self.flow.read_paused:
            self._last_progress = now
        due = self._last_progress + self._read_timeout_s
        if now < due:
            self._timer = loop.call_at(due, self._check_timeout)
            return
        self._fail(UpstreamTimeout(f"no data for {self._read_timeout_s:g} s"))
