"""The data port's listening socket: its connections, their limits, and an orderly close."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from proxy.http.message import Limits, Request
from proxy.http.server import Connection

__all__ = ["Handler", "Server"]

Handler = Callable[[Request, Connection], Awaitable[bool]]


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
