"""The admin port: metrics, health and status, apart from the data port so probes never queue
behind client traffic.

``/health/live`` is 200 while the process serves; ``/health/ready`` is 200 only when production
accepts a TCP connection (and 503 while draining), so a load balancer stops sending before the
proxy could only answer 502. ``/admin/status`` shows the counters and the effective configuration
without secrets. ``/metrics`` is the Prometheus text format from the injected registry.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.app import ProxyState

__all__ = ["create_admin_app"]

_PROBE_TIMEOUT_S = 1.0


async def _production_reachable(url: str) -> str | None:
    """``None`` when a TCP connection to production opens, else the reason it did not."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            _, writer = await asyncio.open_connection(parts.hostname, port)
    except (OSError, TimeoutError) as exc:
        return f"production {parts.hostname}:{port} unreachable: {exc or type(exc).__name__}"
    writer.close()
    await writer.wait_closed()
    return None


def create_admin_app(state: ProxyState) -> web.Application:
    """Admin routes reading the data port's ``state``."""
    app = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(state.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def ready(_: web.Request) -> web.Response:
        if state.draining or state.tee is None:
            return web.json_response({"status": "not ready", "reason": "not serving"}, status=503)
        reason = await _production_reachable(state.settings.prod)
        if reason is not None:
            return web.json_response({"status": "not ready", "reason": reason}, status=503)
        return web.json_response({"status": "ready"})

    async def status(_: web.Request) -> web.Response:
        shipper, pairing, tee = state.shipper, state.pairing, state.tee
        return web.json_response(
            {
                "experiment": state.settings.experiment,
                "draining": state.draining,
                "counters": state.stats.snapshot(),
                "gauges": {
                    "tee_inflight": tee.inflight if tee else 0,
                    "pairing_buffer_pairs": len(pairing) if pairing else 0,
                    "ship_queue_pairs": shipper.queued if shipper else 0,
                    "spool_batches": len(shipper.spool) if shipper else 0,
                    "spool_pairs": shipper.spool.pairs if shipper else 0,
                    "spool_bytes": shipper.spool.bytes if shipper else 0,
                },
                # teed + inherited == delivered + dropped + in flight ("unaccounted" is 0).
                "accounting": state.stats.accounting(
                    buffer=len(pairing) if pairing else 0,
                    queue=shipper.queued if shipper else 0,
                    spool=shipper.spool.pairs if shipper else 0,
                ),
                "config": state.settings.public_view(),
            }
        )

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/admin/status", status)
    return app
