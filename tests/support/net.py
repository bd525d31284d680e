"""Loopback ports and aiohttp servers for tests: only 127.0.0.1, port 0 where the test allows."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

__all__ = ["free_port", "serve_app"]


def free_port() -> int:
    """A loopback port nothing listens on right now (for a server that starts later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serve_app(app: web.Application, port: int = 0) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1 (port 0: any free one) and yield its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        host, bound = runner.addresses[0][:2]
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()
