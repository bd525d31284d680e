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
import gc
import logging
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from proxy.admin import create_admin_app
from proxy.app import DataPort
from proxy.http.listener import Server
from proxy.http.message import Limits
from proxy.metrics import ProxyStats
from proxy.settings import ProxySettings, parse_host_port

__all__ = ["run", "serve"]

log = logging.getLogger("shadowtee.proxy")

# Young-generation threshold raised from CPython's 700: a request allocates a few dozen objects,
# nearly all freed by reference counting, so the default runs the collector every ~20 requests.
GC_THRESHOLDS = (10_000, 10, 10)


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

    port = DataPort(settings)
    state = port.state

    def body_timeout() -> None:
        state.stats.client_body_timeouts += 1

    server = Server(
        port.handle,
        Limits(
            max_body_bytes=settings.client_max_size,
            keepalive_timeout_s=settings.keepalive_timeout_s,
            body_timeout_s=settings.client_body_timeout_s,
            max_connections=settings.max_connections,
            max_buffered_bytes=settings.max_buffered_bytes,
        ),
        body_timeout,
    )
    admin_runner = web.AppRunner(create_admin_app(state), access_log=None, shutdown_timeout=2.0)
    try:
        await port.start()
        await admin_runner.setup()
        host, data_port = await server.start(*parse_host_port(settings.listen))
        admin_host, admin_port = parse_host_port(settings.admin_listen)
        site = web.TCPSite(admin_runner, admin_host, admin_port, backlog=128)
        await site.start()
        data_url = f"http://{host}:{data_port}"
        bound = admin_runner.addresses[0][:2]
        admin_url = f"http://{bound[0]}:{bound[1]}"
        log.info("proxy listening on %s (admin %s) -> prod %s", data_url, admin_url, settings.prod)
        if on_ready is not None:
            on_ready(data_url, admin_url)
        await stop.wait()
        log.info("shutting down: draining requests, tees and pairs")
    finally:
        state.draining = True
        await server.shutdown(settings.shutdown_timeout_s)
        await port.stop()
        await admin_runner.cleanup()
        for sig in signals:
            loop.remove_signal_handler(sig)
    stats = state.stats
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
        # Everything built at start-up lives as long as the process: move it out of the
        # collector's reach, so the full collections that request garbage triggers do not walk
        # it again each time (they showed as pauses in the p99), and collect less often.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        # One machine-readable line so scripts and tests can find ports chosen with :0.
        print(f"shadowtee proxy ready data={data_url} admin={admin_url}", flush=True)

    runner(serve(settings, on_ready=ready))
    sys.stdout.flush()
    return 0
