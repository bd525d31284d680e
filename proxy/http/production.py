"""Production's client: one pool, answers streamed with back-pressure, one retry rule.

The head is handed over as soon as it is parsed, and body bytes flow to the caller with
back-pressure: reading from production pauses while the caller holds :data:`HIGH_WATER` bytes it
has not taken, and resumes below half of it. An answer whose whole body is at most
``inline_bytes`` (with a ``Content-Length``) is handed over complete, so the proxy can answer the
client with one write.
"""

from __future__ import annotations

import asyncio
from collections import deque

from proxy.exceptions import UpstreamProtocolError
from proxy.http.body import BodyStream
from proxy.http.client import ClientConnection
from proxy.http.exchange import ResponseHead, Upstream
from proxy.http.pool import Pool

__all__ = ["HIGH_WATER", "IDEMPOTENT", "ProductionClient", "ProductionResponse"]

HIGH_WATER = 256 * 1024
# RFC 9110 §9.2.2: a request with one of these methods may be sent again.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class ProductionResponse:
    """Production's answer: the head at once, the body whole (small) or as a stream (large).

    ``body`` is set when the whole body arrived before the head was handed over (every answer
    of at most ``inline_bytes`` with a ``Content-Length``, and every answer without a body);
    otherwise read it with :meth:`read_chunk` until it returns ``b""``.
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

    def __init__(self, waiter: asyncio.Future[None], inline: int, conn: Upstream) -> None:
        self._waiter: asyncio.Future[None] | None = waiter
        self._inline = inline
        self._chunks: deque[bytes] = deque()
        self._pending = 0
        self._conn: Upstream | None = conn
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

    # --- Sink (called by the connection) ------------------------------------------------------

    def head(self, conn: Upstream, head: ResponseHead) -> None:
        self._conn = conn
        self.status = head.status
        self.reason = head.reason
        self.lines = head.lines
        self.length = head.length
        self.chunked = head.chunked
        self.model_version = head.model_version
        if not head.has_body:  # HEAD, 204, 304, Content-Length: 0
            self.body = b""
            self._wake()
        elif head.length is not None and head.length <= self._inline:
            self.inline = True  # small: hand it over whole, in done()
        # Otherwise it is streamed, from its first body byte on: a body that is malformed from
        # its start (a bad first chunk size) is still a 502, not a 200 cut short.

    def data(self, conn: Upstream, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._pending += len(chunk)
        if self.inline:
            return
        self._wake()
        if self._pending >= HIGH_WATER:
            conn.pause_reading()

    def done(self, conn: Upstream) -> None:
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
                if conn is not None and self._pending < HIGH_WATER // 2:
                    conn.resume_reading()
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
            conn.detach()
            conn.close()


class ProductionClient:
    """Production's pool: at most ``limit`` connections; requests beyond it wait for one."""

    def __init__(self, base_url: str, *, limit: int, timeout_s: float, inline_bytes: int):
        self._pool = Pool(
            base_url,
            "production",
            limit=limit,
            read_timeout_s=timeout_s,
            connect_timeout_s=timeout_s,
        )
        self.prefix = self._pool.prefix
        self.host_header = self._pool.host_header
        self._inline = inline_bytes
        # The running loop, read once: asyncio.get_running_loop() costs a getpid() system call
        # on every call (CPython 3.11), and this is on every request's path.
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def open_connections(self) -> int:
        return self._pool.open_connections

    async def request(
        self, data: bytes, method: str, body: BodyStream | None = None
    ) -> ProductionResponse:
        """Send an encoded request; return once the head (and a small body) is in.

        With ``body``, ``data`` is the request's head only and the body is forwarded from the
        stream as the client sends it, with back-pressure both ways (a slow production stops
        the proxy reading the client).

        Raises :class:`~proxy.exceptions.UpstreamTimeout` when production is silent for longer
        than the timeout, ``OSError`` when it cannot be reached or breaks off before the head.

        **Retries.** A request is sent a second time only when all of these hold: it went out
        on a kept-alive connection (a fresh connection failing is production's answer), that
        connection broke before a single byte of the answer came back (a server closing an idle
        connection just as the request crossed it), and the method is idempotent (RFC 9110
        §9.2.2). A ``POST`` is never retried: production may have acted on it before closing,
        and the proxy cannot tell, so the client gets the 502 and decides. Nor is a request
        whose body was streamed: its bytes are gone.
        """
        if body is not None:
            conn, _ = await self._pool.acquire()
            return await self._exchange(conn, data, method, body)
        # Usually a kept-alive connection is idle: taken without a coroutine to wait in.
        idle = self._pool.idle_connection()
        conn, reused = (idle, True) if idle is not None else await self._pool.acquire()
        try:
            return await self._exchange(conn, data, method)
        except ConnectionError as exc:
            retry = (
                reused
                and not conn.got_bytes
                and method in IDEMPOTENT
                and not isinstance(exc, UpstreamProtocolError)
            )
            if not retry:
                raise
        conn, _ = await self._pool.acquire(fresh=True)
        return await self._exchange(conn, data, method)

    async def _exchange(
        self, conn: ClientConnection, data: bytes, method: str, body: BodyStream | None = None
    ) -> ProductionResponse:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        resp = ProductionResponse(waiter, self._inline, conn)
        conn.send(data, method == "HEAD", resp, more=body is not None)
        try:
            if body is not None:
                await _forward_body(conn, body, waiter)
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # the connection's side of the same failure: seen, not raised
            resp.abandon()
            raise
        return resp

    async def close(self) -> None:
        await self._pool.close()


async def _forward_body(
    conn: ClientConnection, body: BodyStream, answered: asyncio.Future[None]
) -> None:
    """Copy a streamed request body to production until it ends or production has answered.

    A body that breaks off (the client went away or stalled past its timeout) closes the
    production connection: production must never take half a body for a whole one.
    """
    while True:
        try:
            chunk = await body.read(answered)
        except BaseException:
            conn.close()
            raise
        if chunk is None:  # answered early: the connection closes once the answer is read
            return
        if not chunk:
            conn.end_request()
            return
        conn.send_body(chunk)
        await conn.drain()
