"""The admin port: metrics, health and status, apart from the data port so probes never queue
behind client traffic.

``/health/live`` is 200 while the process serves; ``/health/ready`` is 200 only when production
accepts a TCP connection (and 503 while draining), so a load balancer stops sending before the
proxy could only answer 502. ``/admin/status`` shows the counters and the effective configuration
without secrets. ``/metrics`` is the Prometheus text format from the injected registry.

Live control of the tee (:mod:`proxy.control`) is a write API that exists only when an
``admin_token`` is configured; without one those routes are not registered at all. Each write
needs ``Authorization: Bearer <token>`` (compared in constant time; 401 otherwise, and nothing
changes) and answers the tee's live settings::

    POST /admin/tee/pause                                  {"by": "alice"}        (body optional)
    POST /admin/tee/resume
    POST /admin/tee/sample-rate   {"sample_rate": 0.05}
    POST /admin/tee/candidate     {"candidate": "http://10.0.0.7:8001"}
    GET  /admin/tee               the live settings (no token needed, like /admin/status)

A bad value is a 400 whose ``field`` names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from proxy.control import ControlCollector, ControlError, TeeControl
from proxy.state import ProxyState

__all__ = ["create_admin_app"]

_PROBE_TIMEOUT_S = 1.0
_MAX_WRITE_BODY = 16 * 1024
_CONTROL = web.AppKey("control", TeeControl)

log = logging.getLogger("shadowtee.proxy")


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
    app = web.Application(client_max_size=_MAX_WRITE_BODY)

    async def control_ctx(app: web.Application) -> AsyncIterator[None]:
        # The control lives as long as the admin port.
        control = TeeControl(tee=state.tee, rules=state.rules, settings=state.settings)
        collector = ControlCollector(control)
        state.registry.register(collector)
        app[_CONTROL] = control
        task = asyncio.create_task(
            control.run(lambda: state.draining), name="shadowtee-tee-control"
        )
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        state.registry.unregister(collector)

    app.cleanup_ctx.append(control_ctx)

    # prometheus-client's handler: the text format, or OpenMetrics when the scraper asks for
    # it (Prometheus does), gzipped when the scraper accepts it.
    metrics = make_aiohttp_handler(state.registry)

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def ready(_: web.Request) -> web.Response:
        if state.draining:
            return web.json_response({"status": "not ready", "reason": "not serving"}, status=503)
        reason = await _production_reachable(state.settings.prod)
        if reason is not None:
            return web.json_response({"status": "not ready", "reason": reason}, status=503)
        return web.json_response({"status": "ready"})

    async def status(_: web.Request) -> web.Response:
        gauges = state.gauges()
        return web.json_response(
            {
                "experiment": state.settings.experiment,
                "draining": state.draining,
                # The comparator replica the shipper sends to now ("-": none configured); it
                # moves on to the next of the list after a failure (counter comparator_failovers).
                "comparator": state.shipper.link.shown(),
                "counters": state.stats.snapshot(),
                "gauges": gauges,
                # teed + inherited == delivered + dropped + in flight ("unaccounted" is 0).
                "accounting": state.stats.accounting(
                    buffer=int(gauges["pairing_buffer_pairs"]),
                    queue=int(gauges["ship_queue_pairs"]),
                    spool=int(gauges["spool_pairs"]),
                ),
                "config": state.settings.public_view(),
                # The tee as it runs now: live changes override the configuration above.
                "tee": app[_CONTROL].view() if _CONTROL in app else None,
            }
        )

    async def tee_view(request: web.Request) -> web.Response:
        return web.json_response(request.app[_CONTROL].view())

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/admin/status", status)
    app.router.add_get("/admin/tee", tee_view)
    token = state.settings.admin_token
    if token is not None and token.get_secret_value():
        _add_write_routes(app, token.get_secret_value().encode())
    return app


_Change = Callable[[TeeControl, dict[str, Any], str], dict[str, Any]]


def _add_write_routes(app: web.Application, token: bytes) -> None:
    """The live control routes, each behind the bearer token."""
    expected = b"Bearer " + token

    def route(change: _Change) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            given = request.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                log.warning(
                    "tee control: refused %s %s from %s: no valid bearer token",
                    request.method,
                    request.path,
                    request.remote,
                )
                return web.json_response(
                    {"error": "a valid bearer token is required", "field": "Authorization"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="shadowtee-admin"'},
                )
            try:
                doc = await _read_object(request)
                by = _who(doc, request)
                return web.json_response(change(request.app[_CONTROL], doc, by))
            except ControlError as exc:
                return web.json_response({"error": str(exc), "field": exc.field}, status=400)

        return handler

    app.router.add_post("/admin/tee/pause", route(lambda c, _doc, by: c.pause(by)))
    app.router.add_post("/admin/tee/resume", route(lambda c, _doc, by: c.resume(by)))
    app.router.add_post(
        "/admin/tee/sample-rate",
        route(lambda c, doc, by: c.set_sample_rate(_required(doc, "sample_rate"), by)),
    )
    app.router.add_post(
        "/admin/tee/candidate",
        route(lambda c, doc, by: c.set_candidate(_required(doc, "candidate"), by)),
    )


async def _read_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; an empty body is ``{}``."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ControlError("body", f"larger than {_MAX_WRITE_BODY} bytes") from None
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ControlError("body", "expected a JSON object") from None
    if not isinstance(doc, dict):
        raise ControlError("body", "expected a JSON object")
    return doc


def _required(doc: dict[str, Any], name: str) -> object:
    if name not in doc:
        raise ControlError(name, "required")
    return doc[name]


def _who(doc: dict[str, Any], request: web.Request) -> str:
    """``"<by> from <peer>"`` for the log: an optional name the caller gives, and its address."""
    by = doc.get("by", "operator")
    if not isinstance(by, str) or not 0 < len(by) <= 64 or not by.isprintable():
        raise ControlError("by", "expected a printable name of at most 64 characters")
    return f"{by} from {request.remote}"
