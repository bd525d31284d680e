"""Flow control: one small object per connection that pauses reading and waits for writes.

Both sides of the proxy move bytes between sockets that may be slower than each other: the
server connection stops reading a client's pipelined requests while that client does not read
its answers, and a production connection stops reading while the client it streams to lags.
Both use this object, so pausing is idempotent and a connection can always say whether it is
paused (a paused connection is never handed back to a pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import termios

__all__ = ["FlowControl", "delivered"]

_POLL_S = 0.005


def _unsent(transport: asyncio.Transport) -> int:
    """Bytes still in the transport's buffer and in the kernel's send queue (Linux SIOCOUTQ:
    not yet acknowledged by the peer); 0 where the kernel cannot tell."""
    left = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
            left += struct.unpack("i", raw)[0]
    return left


async def delivered(transport: asyncio.Transport, limit_s: float) -> bool:
    """Wait (at most ``limit_s``) until the peer has acknowledged every byte written so far:
    a reset sent after that loses none of them. Whether it happened in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not transport.is_closing() and _unsent(transport) > 0:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


class FlowControl:
    """Idempotent pause/resume of reading and a drain for writing, for one transport."""

    __slots__ = ("_transport", "_write_waiter", "read_paused", "write_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._write_waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<FlowControl read_paused={self.read_paused} write_paused={self.write_paused}>"

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            if not self._transport.is_closing():
                self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()

    # The protocol's pause_writing/resume_writing callbacks forward here.
    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        """Wait while the peer's socket buffer is full (returns at once when it is not)."""
        if not self.write_paused:
            return
        waiter = self._write_waiter
        if waiter is None:
            waiter = self._write_waiter = asyncio.get_running_loop().create_future()
        await waiter

    def connection_lost(self) -> None:
        """Wake a writer waiting on a connection that is gone (its writes are no-ops now)."""
        self.resume_writing()
