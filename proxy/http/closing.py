"""How a server connection ends: a close after the last answer, a reset that a short body needs,
and the lingering close after a refusal (a mixin of :class:`~proxy.http.server.Connection`).

Three ways, each for a reason a client can observe: ``close`` flushes and sends a FIN (the answer
was whole); ``abort`` cuts an answer production broke off — by its framing to an HTTP/1.1 client,
by a reset to an HTTP/1.0 one once the bytes before the cut are acknowledged and the client had
READ_GRACE_S to read them (a reset discards what the client's kernel holds unread); ``_close_lingering``
half-closes after a refusal and reads what the client still sends before closing, so no reset
throws the refusal away (RFC 9112 §9.6).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from proxy.http.flow import FlowControl, delivered
from proxy.http.parse import DISCARD_MAX

__all__ = ["FLUSH_BEFORE_RESET_S", "LINGER_S", "READ_GRACE_S", "Closing"]

FLUSH_BEFORE_RESET_S = 10.0  # a cut HTTP/1.0 answer: how long its bytes may take to arrive
READ_GRACE_S = 1.0  # then, how long the client has to read those bytes before the reset
LINGER_S = 2.0  # after a refusal, how long what the client still sends is read and dropped
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


class Closing:
    """The ending of a server connection (a mixin: the connection owns these attributes)."""

    transport: asyncio.Transport | None
    flow: FlowControl | None
    closed: bool
    _loop: asyncio.AbstractEventLoop
    _cut_gracefully: bool
    _flushing: asyncio.Task[None] | None
    _lingering: bool
    _discard_left: int
    _stop_reading: bool
    _linger_timer: asyncio.TimerHandle | None

    def close(self) -> None:
        """Close once what was written is flushed."""
        self.closed = True
        if self.transport is not None and self._flushing is None:  # else: a reset follows
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection: production broke off after the head was sent.

        To an HTTP/1.1 client the answer's framing (a length, or chunks without their end) shows
        the cut, so what was written before it (earlier pipelined answers) still goes out, then
        the close. To an HTTP/1.0 client a body may be delimited by the close itself, which would
        pass a short body off as complete: it gets a reset, once the client has acknowledged
        the bytes written before it (at most FLUSH_BEFORE_RESET_S) and had READ_GRACE_S to read
        them.
        """
        if self._cut_gracefully:
            self.close()
        elif self.transport is not None and not self.closed:
            # What went out before the cut (earlier pipelined answers, the short body's start)
            # reaches the client first; the reset follows (bounded, see _reset_when_delivered).
            self.closed = True
            self._flushing = self._loop.create_task(self._reset_when_delivered())
        else:
            self._reset()

    async def _reset_when_delivered(self) -> None:
        try:
            if self.transport is not None and await delivered(self.transport, FLUSH_BEFORE_RESET_S):
                # Acknowledged is not read: a reset makes the client's kernel drop what its
                # reader has not taken yet, so the reader gets a moment to take it.
                await asyncio.sleep(READ_GRACE_S)
        finally:
            self._reset()

    def _reset(self) -> None:
        """Close at once with a reset; what is still buffered is dropped."""
        self.closed = True
        transport = self.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            transport.abort()

    def _close_lingering(self) -> None:
        """After a refusal: close the sending side, read and drop what the client still sends
        (up to DISCARD_MAX bytes, LINGER_S seconds), then close (RFC 9112 §9.6). Closing with
        its body unread would reset the connection and could throw the refusal away."""
        self.closed = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._lingering = True
        self._discard_left = DISCARD_MAX
        self._stop_reading = False
        if self.flow is not None:
            self.flow.resume_reading()
        self._linger_timer = self._loop.call_later(LINGER_S, self._reset)
