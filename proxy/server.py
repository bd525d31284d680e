"""Run the proxy: the data port and the admin port, and the ordered shutdown on SIGTERM/SIGINT.

Shutdown is a time-boxed script, in this order:

1. mark not-ready and stop accepting connections on the data port;
2. let in-flight client requests finish (up to ``shutdown_timeout_s``; idle keep-alive
   connections are closed at once);
3. stop teeing, give in-flight candidate calls ``tee_grace_ms``, cancel the rest (their pairs
   record a timeout);
4. emit every half-finished pair, then send the queue to the comparator once — what it does not
   take goes to the spool, to be replayed by the next start;
5. close the client pools, then the admin port; return, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from proxy.admin import create_admin_app
from proxy.app import STATE, create_app
from proxy.metrics import ProxyStats
from proxy.settings import ProxySettings, parse_host_port

__all__ = ["run", "serve"]

log = logging.getLogger("shadowtee.proxy")


def _bound(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


async def serve(
    settings: ProxySettings,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str, str], None] | None = None,
    handle_signals: bool = True,
) -> ProxyStats:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), shut down in order, return the counters."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)

    data_app = create_app(settings)
    admin_app = create_admin_app(data_app)
    data_runner = web.AppRunner(
        data_app,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout_s,
        keepalive_timeout=settings.keepalive_timeout_s,
    )
    admin_runner = web.AppRunner(admin_app, access_log=None, shutdown_timeout=2.0)
    try:
        await data_runner.setup()
    except BaseException:
        await data_runner.cleanup()  # close what the contexts that did start opened
        raise
    await admin_runner.setup()
    try:
        for runner, listen in (
            (data_runner, settings.listen),
            (admin_runner, settings.admin_listen),
        ):
            host, port = parse_host_port(listen)
            await web.TCPSite(runner, host, port, backlog=1024).start()
        data_url, admin_url = _bound(data_runner), _bound(admin_runner)
        log.info("proxy listening on %s (admin %s) -> prod %s", data_url, admin_url, settings.prod)
        if on_ready is not None:
            on_ready(data_url, admin_url)
        await stop.wait()
        log.info("shutting down: draining requests, tees and pairs")
        data_app[STATE].draining = True
    finally:
        await data_runner.cleanup()
        await admin_runner.cleanup()
        for sig in signals:
            loop.remove_signal_handler(sig)
    stats = data_app[STATE].stats
    log.info(
        "stopped: %d requests, %d pairs delivered, %d spooled, %d dropped",
        stats.requests,
        stats.pairs_delivered,
        stats.pairs_spooled,
        sum(stats.dropped.values()),
    )
    return stats


def run(settings: ProxySettings) -> int:
    """Blocking entry point for the CLI: uvloop when available, exit status 0 after a drain."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner: Callable[..., None] = asyncio.run
    else:
        runner = uvloop.run

    def ready(data_url: str, admin_url: str) -> None:
        # One machine-readable line so scripts and tests can find ports chosen with :0.
        print(f"shadowtee proxy ready data={data_url} admin={admin_url}", flush=True)

    runner(serve(settings, on_ready=ready))
    sys.stdout.flush()
    return 0
