"""Keep-alive connections to one upstream: acquire, release, discard, linger.

The pool never looks inside a connection; it asks it (:meth:`ClientConnection.is_available`), and a
connection tells the pool when its answer is complete (:meth:`Pool.release`) and when it is gone
(:meth:`Pool.forget`). A released connection that is not available — closed, paused, or with an
answer that did not allow keep-alive — is closed instead of kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from urllib.parse import urlsplit

from proxy.exceptions import UpstreamTimeout
from proxy.http.client import ClientConnection

__all__ = ["Pool"]


class Pool:
    """Connections to one base URL (``http://host:port[/prefix]``), at most ``limit`` of them."""

    def __init__(
        self,
        base_url: str,
        what: str,
        *,
        limit: int | None = None,
        read_timeout_s: float | None = None,
        connect_timeout_s: float | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the {what} client speaks plain http://, got {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self.prefix = parts.path.rstrip("/").encode()
        self.host_header = parts.netloc.encode()
        self._limit = limit
        self._read_timeout_s = read_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[ClientConnection] = []
        self._all: set[ClientConnection] = set()
        self._lingering: dict[ClientConnection, asyncio.TimerHandle] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._connecting = 0

    def __repr__(self) -> str:
        return (
            f"<Pool {self._host}:{self._port} open={len(self._all)} idle={len(self._idle)} "
            f"lingering={len(self._lingering)}>"
        )

    @property
    def open_connections(self) -> int:
        return len(self._all)

    @property
    def lingering(self) -> int:
        """Connections whose caller gave up, left to drain a late answer."""
        return len(self._lingering)

    # --- handing connections out --------------------------------------------------------------

    def idle_connection(self) -> ClientConnection | None:
        """An available kept-alive connection, or ``None``."""
        while self._idle:
            conn = self._idle.pop()
            if conn.is_available():
                return conn
        return None

    async def acquire(self, *, fresh: bool = False) -> tuple[ClientConnection, bool]:
        """A connection and whether it was kept alive; waits while ``limit`` are open."""
        if not fresh:
            conn = self.idle_connection()
            if conn is not None:
                return conn, True
        limit = self._limit
        while limit is not None and len(self._all) + self._connecting >= limit:
            conn = None if fresh else self.idle_connection()
            if conn is not None:
                return conn, True
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        if not fresh:
            conn = self.idle_connection()
            if conn is not None:
                return conn, True
        return await self.connect(), False

    async def connect(self) -> ClientConnection:
        """Open a new connection (counted from the start, so the limit holds while it opens)."""
        loop = asyncio.get_running_loop()
        self._connecting += 1
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: ClientConnection(self, self._read_timeout_s), self._host, self._port
                )
        except TimeoutError as exc:
            raise UpstreamTimeout("connect timed out") from exc
        finally:
            self._connecting -= 1
        self._all.add(conn)
        return conn

    # --- taking them back ---------------------------------------------------------------------

    def release(self, conn: ClientConnection) -> None:
        """An answer is complete: keep the connection if it is clean, else close it."""
        if self._lingering:  # (checked here: this runs for every answer)
            self._stop_lingering(conn)
        if conn.is_available() and conn in self._all:
            self._idle.append(conn)
            if self._waiters:
                self._wake_one()
        else:
            conn.close()

    def discard(self, conn: ClientConnection) -> None:
        """Close a connection whatever its state (its caller stopped reading mid-answer)."""
        conn.close()

    def linger(self, conn: ClientConnection, seconds: float) -> None:
        """Its caller gave up: let a late answer drain for ``seconds``, then close it.

        A connection whose request has not all reached the socket (an upstream that does not
        read) is closed at once instead: lingering, it would keep that request's bytes, up to
        a whole body, in its write buffer with no call counting them."""
        if conn.is_idle() or conn in self._lingering or conn not in self._all:
            return
        if conn.unsent():
            conn.close()
            return
        self._lingering[conn] = asyncio.get_running_loop().call_later(seconds, conn.close)

    def forget(self, conn: ClientConnection) -> None:
        """The connection is gone."""
        self._stop_lingering(conn)
        self._all.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        self._wake_one()

    def _stop_lingering(self, conn: ClientConnection) -> None:
        timer = self._lingering.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close every connection (idle, busy or lingering)."""
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
        # Let connection_lost callbacks run so transports are closed before the loop ends.
        for _ in range(3):
            if not self._all:
                break
            await asyncio.sleep(0)
