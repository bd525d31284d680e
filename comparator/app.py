"""The comparator application: its routes (:mod:`comparator.routes`), its resources and its run.

Resources live in cleanup contexts in order — the store (migrated on start), the leader campaign,
then the memory sampler, the retention task and the looks — and close in reverse.

The background role (memory sampling, periodic looks, retention) runs in one process: with
``--workers``, worker 0; on PostgreSQL, among every replica sharing the database, only the one
holding the leader lock (:mod:`comparator.leader`) — the others serve ingest and reads, and follow
the looks the leader saves.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError

from comparator import workers
from comparator.judge.looks import LookBook, Looker
from comparator.judge.policy import load_policy
from comparator.judge.webhook import WebhookConfig
from comparator.leader import PgLeader
from comparator.metrics import ComparatorMetrics
from comparator.routes import (
    IN_FLIGHT,
    LEADERSHIP,
    LOOKER,
    LOOKS,
    METRICS,
    POLICY,
    ROLE,
    SETTINGS,
    STORE,
    InFlight,
    Leadership,
    Role,
    add_routes,
    require_token,
)
from comparator.sampler import MemorySampler
from comparator.settings import ComparatorSettings
from comparator.store.store import Store
from contract import parse_host_port

__all__ = ["GC_THRESHOLDS", "create_app", "run", "serve_worker", "tune_gc"]

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0
LEADER_RECHECK_S = 5.0  # how often a replica without the role checks whether it has it now


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    warmup = load_policy(Path(s.policy) if s.policy else None).window.warmup_minutes
    store = await Store.open(
        s.db,
        upgrade=True,
        normalize_config=partial(s.normalize_config, policy_warmup_minutes=warmup),  # type: ignore[arg-type]
        store_bodies=s.store_request_bodies,
        raw_sample_rate=s.raw_sample_rate,
        writes_first=s.workers > 1,  # the workers share every experiment's lock
    )
    store.replica = s.replica or f"{socket.gethostname()}-{os.getpid()}"
    app[STORE] = store
    yield
    await store.close()


async def _leader_ctx(app: web.Application) -> AsyncIterator[None]:
    """On PostgreSQL, the background process campaigns for the leader lock until it stops."""
    s, store, metrics = app[SETTINGS], app[STORE], app[METRICS]
    leadership = Leadership(background=app[ROLE].background)
    app[LEADERSHIP] = leadership
    if not leadership.background or store.dialect != "postgresql":
        metrics.leader.set(1 if leadership.background else 0)
        yield
        return

    def changed(leading: bool) -> None:
        metrics.leader.set(1 if leading else 0)
        log.info("replica %s %s the leader", store.replica, "is now" if leading else "is no longer")

    elector = PgLeader(
        s.db, interval_s=s.leader_interval_s, timeout_s=s.leader_timeout_s, on_change=changed
    )
    leadership.elector = elector
    metrics.leader.set(0)
    await elector.step()  # the first campaign tick before serving: a lone replica leads at once
    task = asyncio.get_running_loop().create_task(elector.run(), name="leader-campaign")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _sampler_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    if not s.scrape or not app[ROLE].background:
        yield
        return
    sampler = MemorySampler(
        app[STORE],
        s.scrape,
        experiment=s.scrape_experiment,
        metrics=app[METRICS],
        interval_s=s.scrape_interval_s,
        timeout_s=s.scrape_timeout_s,
        gate=app[LEADERSHIP],
    )
    task = sampler.start()
    yield
    await MemorySampler.stop(task)


async def _retention_loop(store: Store, days: float, gate: Callable[[], bool]) -> None:
    while True:
        if not gate():  # another replica leads: look again shortly, in case it goes
            await asyncio.sleep(LEADER_RECHECK_S)
            continue
        try:
            cutoff = datetime.now(UTC) - timedelta(days=days)
            n = await store.purge_pairs(cutoff)
            if n:
                log.info("retention: purged %d raw pairs older than %g days", n, days)
            q = await store.purge_quarantine(cutoff)
            if q:
                log.info("retention: purged %d quarantine rows older than %g days", q, days)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("retention pass failed: %s", exc)
        await asyncio.sleep(RETENTION_INTERVAL_S)


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    days = app[SETTINGS].retention_days
    if days <= 0 or not app[ROLE].background:
        yield
        return
    task = asyncio.get_running_loop().create_task(
        _retention_loop(app[STORE], days, app[LEADERSHIP])
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _looks_ctx(app: web.Application) -> AsyncIterator[None]:
    """Periodic saved looks, verdict gauges and the decision webhook (comparator.judge.looks)."""
    s = app[SETTINGS]
    policy = load_policy(Path(s.policy) if s.policy else None)
    app[POLICY]["policy"] = policy
    webhook = None
    if s.webhook_url and s.webhook_secret is not None:
        webhook = WebhookConfig(s.webhook_url, s.webhook_secret.get_secret_value().encode())
    # Whose memory is scraped: the verdict tells "no scrape target" (NA) from a silent one.
    sources = {s.scrape_experiment: frozenset(s.scrape)} if s.scrape else {}
    looker = Looker(app[STORE], policy, app[LOOKS], webhook=webhook, memory_sources=sources)
    app[LOOKER] = looker
    task = None
    if s.verdict_interval_s > 0:
        leadership = app[LEADERSHIP]
        looks = looker.run(s.verdict_interval_s, follow=lambda: not leadership())
        task = asyncio.get_running_loop().create_task(looks)
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await looker.close()


def create_app(
    settings: ComparatorSettings,
    registry: CollectorRegistry | None = None,
    *,
    role: Role | None = None,
) -> web.Application:
    """The comparator application; the store opens (and migrates) when the app starts."""
    # The ingest handler enforces max_body_bytes itself; this only keeps aiohttp out of the way.
    app = web.Application(client_max_size=settings.max_body_bytes + 1, middlewares=[require_token])
    app[SETTINGS] = settings
    app[ROLE] = role or Role()
    app[IN_FLIGHT] = InFlight()
    app[METRICS] = ComparatorMetrics.create(registry)
    app[POLICY] = {}
    app[LOOKS] = LookBook()
    app[METRICS].registry.register(app[LOOKS])
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_leader_ctx)
    app.cleanup_ctx.append(_sampler_ctx)
    app.cleanup_ctx.append(_retention_ctx)
    app.cleanup_ctx.append(_looks_ctx)
    add_routes(app)
    return app


# Young-generation threshold raised from CPython's 700: validating and measuring a 500-pair batch
# allocates tens of thousands of short-lived objects, so the default runs the collector dozens of
# times per batch, and each older-generation pass walks every live batch again.
GC_THRESHOLDS = (50_000, 10, 10)


def tune_gc() -> None:
    """Move what start-up built out of the collector's reach and collect less often.

    Called once the store is open, so that validating a batch no longer walks start-up's objects.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _tune_gc_on_startup(_app: web.Application) -> None:
    tune_gc()


def serve_worker(
    settings: ComparatorSettings, sock: socket.socket, background: bool, metrics_dir: str
) -> int:
    """One of ``--workers`` processes: serve on ``sock``; the first also runs the background role."""
    return run(settings, sock=sock, role=Role(background=background, metrics_dir=metrics_dir))


def run(
    settings: ComparatorSettings, *, sock: socket.socket | None = None, role: Role | None = None
) -> int:
    """Serve until SIGTERM/SIGINT (uvloop when available), then close in reverse order.

    With ``settings.workers`` > 1 this process starts the workers and waits (comparator.workers);
    a worker serves on the ``sock`` it was handed, in its ``role``. Returns the exit status.
    """
    if sock is None and settings.workers > 1:
        return workers.serve(settings, serve_worker)
    with contextlib.suppress(ImportError):
        import uvloop  # lazy: optional (no wheel on Windows), and only a serving process wants it

        uvloop.install()
    app = create_app(settings, role=role)
    app.on_startup.append(_tune_gc_on_startup)  # after the store and the other contexts start
    if sock is not None:
        web.run_app(app, sock=sock, print=None, shutdown_timeout=10)
    else:
        host, port = parse_host_port(settings.listen)
        web.run_app(app, host=host, port=port, print=None, shutdown_timeout=10)
    return 0
