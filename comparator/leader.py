"""Leader election among comparator replicas that share one PostgreSQL database.

One replica at a time runs the background role (memory sampling, periodic looks, retention). The
leader holds a session-level advisory lock (``pg_try_advisory_lock``) on one dedicated connection:
PostgreSQL releases it the moment that session ends, so a replica that dies (SIGKILL, lost network
once the server notices) frees the lock without any lease table to clean up. Every replica polls
``pg_try_advisory_lock`` each ``interval_s``; the leader runs ``SELECT 1`` on its connection at the
same pace with a ``timeout_s`` bound, and drops the role as soon as that heartbeat fails.

Failover bound: after the leader's session ends, another replica takes the lock on its next poll,
so within ``interval_s`` (+ one connect). A leader that stops heartbeating — a broken connection,
a hung process (SIGSTOP), an event loop blocked — stops acting as leader ``interval_s +
timeout_s`` after its last good heartbeat (:attr:`is_leader` reads the heartbeat's age, so a
process that wakes up acts on nothing before it has checked again), and the server ends its idle
session after ``2 × (interval_s + timeout_s)`` (``idle_session_timeout``), which frees the lock
for another replica: the two windows never overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

__all__ = ["ADVISORY_KEY", "PgLeader", "plain_pg_url"]

log = logging.getLogger(__name__)

#: The advisory lock key of the comparator's background role ("shadowtee" folded to 63 bits).
ADVISORY_KEY = 0x5348_4144_4F57_5445


def plain_pg_url(url: str) -> str:
    """A URL asyncpg.connect accepts (``postgresql://``), from any spelling the comparator takes."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgres"):
        raise ValueError(f"leader election needs PostgreSQL, got {parsed.drivername!r}")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class PgLeader:
    """Campaign for the advisory lock ``key``; ``is_leader`` tells whether this replica holds it."""

    def __init__(
        self,
        url: str,
        *,
        key: int = ADVISORY_KEY,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError("interval_s and timeout_s must be positive")
        self._url = plain_pg_url(url)
        self._key = key
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._conn: Any = None
        self._last_ok = 0.0  # time.monotonic() of the last heartbeat or win that succeeded
        self._on_change = on_change
        self._leader = asyncio.Event()
        self._stopping = False

    @property
    def is_leader(self) -> bool:
        """Holding the lock, as of a heartbeat at most ``interval_s + timeout_s`` old."""
        return self._leader.is_set() and time.monotonic() - self._last_ok <= self.failover_bound_s

    @property
    def idle_session_timeout_ms(self) -> int:
        """After this long without a query, the server ends the lock's session (and the lock)."""
        return int(2 * self.failover_bound_s * 1000)

    @property
    def failover_bound_s(self) -> float:
        """Seconds within which a replica notices its own lost connection, or a free lock."""
        return self.interval_s + self.timeout_s

    async def wait_leader(self) -> None:
        await self._leader.wait()

    async def step(self) -> bool:
        """One campaign tick: connect if needed, heartbeat when leading, else try the lock."""

        try:
            if self._conn is None or self._conn.is_closed():
                # A new session does not hold the old one's lock: step down before reconnecting.
                if self._leader.is_set():
                    log.warning("leader: the lock's session ended; stepping down")
                self._set(False)
                self._conn = await asyncio.wait_for(self._connect(), timeout=self.timeout_s)
            if self._leader.is_set():
                await asyncio.wait_for(self._conn.fetchval("SELECT 1"), timeout=self.timeout_s)
                self._last_ok = time.monotonic()
            else:
                got = await asyncio.wait_for(
                    self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key),
                    timeout=self.timeout_s,
                )
                if got:
                    self._last_ok = time.monotonic()
                    log.info("leader: this replica now runs the background role")
                    self._set(True)
        except Exception as exc:  # any connection or query failure ends the role
            if self._leader.is_set():
                log.warning("leader: lost the lock's connection (%s); stepping down", exc)
            self._set(False)
            await self._drop_conn()
        return self.is_leader

    async def run(self) -> None:
        """Campaign until cancelled; releases the lock by closing the session on the way out."""
        try:
            while not self._stopping:
                await self.step()
                await asyncio.sleep(self.interval_s)
        finally:
            self._set(False)
            await self._drop_conn()

    def _set(self, leading: bool) -> None:
        was = self._leader.is_set()
        if leading:
            self._leader.set()
        else:
            self._leader.clear()
        if was != leading and self._on_change is not None:
            self._on_change(leading)

    async def _connect(self) -> Any:
        timeout = str(self.idle_session_timeout_ms)
        try:
            return await asyncpg.connect(
                self._url, server_settings={"idle_session_timeout": timeout}
            )
        except asyncpg.exceptions.UndefinedObjectError:  # PostgreSQL before 14
            return await asyncpg.connect(self._url)

    async def backend_pid(self) -> int | None:
        """The PostgreSQL backend pid of the lock's session (for tests and logs)."""
        if self._conn is None or self._conn.is_closed():
            return None
        return int(self._conn.get_server_pid())

    async def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=self.timeout_s)
            if not conn.is_closed():
                conn.terminate()
