"""Run ``shadowtee serve``: one process, one model, until SIGTERM or SIGINT.

Start-up loads the model before the port opens, so a bad ``--model`` or ``--device cuda`` on a
machine without one stops the process with :class:`~serving.exceptions.ModelLoadError` (one line,
exit 2 from the CLI). Shutdown stops accepting, lets in-flight requests finish (bounded by
``shutdown_timeout``), then closes the batcher and its inference thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web

from serving.app import create_app
from serving.settings import ServeSettings, parse_host_port

__all__ = ["run", "serve"]

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0005


async def serve(settings: ServeSettings, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    host, port = parse_host_port(settings.listen)
    runner = web.AppRunner(create_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, shutdown_timeout=10.0)
        await site.start()
        for addr in runner.addresses:
            if isinstance(addr, tuple):
                log.info("listening on http://%s:%d", addr[0], addr[1])
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def run(settings: ServeSettings) -> None:
    """Blocking entry point: uvloop when installed, else asyncio's default loop."""
    # The inference thread needs the GIL back to hand each batch's outputs to the event loop;
    # with the default 5 ms switch interval a busy loop (parsing JSON) makes it wait that long
    # per batch, which is longer than a small model takes to run.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - non-Linux platforms
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(settings))
