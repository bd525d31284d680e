"""A request body that is still arriving: handed to the handler at the head, read as it comes.

A request whose ``Content-Length`` is over :data:`STREAM_BODY_BYTES` is handed to the handler as
soon as its head is parsed, with a :class:`BodyStream` instead of the whole body. The handler
either reads it whole (:meth:`BodyStream.read_all`, for a request that is teed) or forwards it
chunk by chunk (:meth:`BodyStream.read`), so a body that is not teed is never held whole: the
server connection stops reading the client while :data:`HIGH_WATER` bytes wait here, and reads
again once the handler has taken them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["HIGH_WATER", "STREAM_BODY_BYTES", "BodyStream"]

STREAM_BODY_BYTES = 1024 * 1024
HIGH_WATER = 256 * 1024


class BodyStream:
    """Body bytes between the server connection (feeding) and the handler (reading)."""

    __slots__ = (
        "_chunks",
        "_error",
        "_on_taken",
        "_waiter",
        "buffered",
        "digest",
        "ended",
        "held_whole",
        "length",
    )

    def __init__(self, length: int, on_taken: Callable[[int], None]) -> None:
        self.length = length
        # When set (a teed request too large to tee), every piece handed on is hashed into it.
        self.digest: Any = None
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        # Bytes taken by read_all: still counted by the server (they are held, whole, by the
        # handler) until the handler is done, which releases them.
        self.held_whole = 0
        self.ended = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._on_taken = on_taken  # told how many bytes the handler took, to resume reading

    def __repr__(self) -> str:
        state = "ended" if self.ended else "failed" if self._error else "open"
        return f"<BodyStream {state} length={self.length} buffered={self.buffered}>"

    @property
    def failed(self) -> bool:
        """The body broke off before its end (the client went away or stalled)."""
        return self._error is not None

    @property
    def client_gone(self) -> bool:
        """The body broke off because the client closed or reset its connection (not because
        the proxy refused the rest of it)."""
        return isinstance(self._error, ConnectionResetError)

    @property
    def finished(self) -> bool:
        """Every byte arrived and was taken (or the stream failed)."""
        return (self.ended and not self._chunks) or self._error is not None

    # --- the server connection's side ---------------------------------------------------------

    def feed(self, chunk: bytes) -> bool:
        """Hold ``chunk`` for the handler; ``False`` (dropped) once the stream has failed."""
        if self._error is not None:
            return False
        self._chunks.append(chunk)
        self.buffered += len(chunk)
        self._wake()
        return True

    def end(self) -> None:
        self.ended = True
        self._wake()

    def fail(self, exc: Exception) -> int:
        """The body will not complete; returns the bytes it was holding (now dropped)."""
        held = self.buffered
        self._chunks.clear()
        self.buffered = 0
        if self._error is None and not self.ended:
            self._error = exc
        self._wake()
        return held

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the handler's side -------------------------------------------------------------------

    async def read(self, stop: asyncio.Future[None] | None = None) -> bytes | None:
        """The next piece; ``b""`` at the end; ``None`` once ``stop`` is done (production
        answered before taking the whole body). Raises what broke the body off."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self.buffered -= len(chunk)
                self._on_taken(len(chunk))
                if self.digest is not None:
                    self.digest.update(chunk)
                return chunk
            if self._error is not None:
                raise self._error
            if self.ended:
                return b""
            if stop is not None:
                if stop.done():
                    return None
                stop.add_done_callback(self._interrupt)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def _interrupt(self, _stop: asyncio.Future[None]) -> None:
        self._wake()

    async def read_all(self) -> bytes:
        """The whole body; the server keeps counting its bytes until the handler is done."""
        parts: list[bytes] = []
        while True:
            if self._chunks:
                parts.extend(self._chunks)
                self._chunks.clear()
                self.held_whole += self.buffered
                self.buffered = 0
                self._on_taken(0)
            elif self._error is not None:
                raise self._error
            elif self.ended:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter
