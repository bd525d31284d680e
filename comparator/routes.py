"""The comparator's HTTP surface: ingest, experiment reads, the verdict, metrics and health.

::

    POST /v1/pairs                          JSON {"pairs": [...]} or NDJSON; bearer token; idempotent
    POST /v1/experiments/{name}/drops       a proxy's cumulative dropped-pair counts; idempotent
    GET  /v1/experiments                    every experiment with its versions and pair count
    GET  /v1/experiments/{name}/summary     ?from=&to= (ISO 8601): from hourly aggregates only
                                            &by=<dimension>&k=: its top-k segments
    GET  /v1/experiments/{name}/verdict     ?at= (not in the future): computed, never stored
    GET  /metrics  /health/live  /health/ready (database reachable and migrated)

With a token configured, every route but ``/metrics`` and ``/health/*`` needs
``Authorization: Bearer <token>`` (reads too: a verdict or a summary is not for anyone who can
reach the port). Only the periodic look (:mod:`comparator.judge.looks`) and ``shadowtee verdict`` store
verdicts, so no caller can plant a decision for ``shadowtee promote`` to act on.

The application keys every part of the app reads are here too.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from comparator.exceptions import IngestError, StoreError, UnknownExperiment
from comparator.ingest import check_token, read_body, screen_body
from comparator.judge.looks import LookBook, Looker
from comparator.judge.policy import load_policy
from comparator.judge.summary import UnknownDimension, summarize
from comparator.judge.verdict import judge
from comparator.leader import PgLeader
from comparator.metrics import ComparatorMetrics
from comparator.settings import ComparatorSettings
from comparator.store.reads import ExperimentInfo
from comparator.store.store import Store
from comparator.wire import DropReport

__all__ = [
    "IN_FLIGHT",
    "LEADERSHIP",
    "LOOKER",
    "LOOKS",
    "METRICS",
    "POLICY",
    "ROLE",
    "SETTINGS",
    "STORE",
    "InFlight",
    "Leadership",
    "Role",
    "add_routes",
    "error_response",
    "require_token",
]

log = logging.getLogger("comparator.app")

SETTINGS = web.AppKey("settings", ComparatorSettings)
METRICS = web.AppKey("metrics", ComparatorMetrics)
STORE = web.AppKey("store", Store)
POLICY = web.AppKey("policy", dict)  # {"policy": Policy} once loaded
LOOKS = web.AppKey("looks", LookBook)
LOOKER = web.AppKey("looker", Looker)


@dataclass(frozen=True)
class Role:
    """What one comparator process does besides serving the API (see comparator.workers).

    ``background``: the memory sampler, the periodic looks and retention (one process of many);
    without it the verdict gauges follow the looks another process saves. ``metrics_dir``: the
    prometheus_client multiprocess directory that ``/metrics`` sums, when there are several.
    """

    background: bool = True
    metrics_dir: str | None = None


ROLE = web.AppKey("role", Role)


@dataclass
class Leadership:
    """Whether this process runs the background role now: a process without the role never
    does; with it, on SQLite always, on PostgreSQL while ``elector`` holds the leader lock."""

    background: bool
    elector: PgLeader | None = None

    def __call__(self) -> bool:
        if not self.background:
            return False
        return self.elector is None or self.elector.is_leader


LEADERSHIP = web.AppKey("leadership", Leadership)


@dataclass
class InFlight:
    """Ingest requests this process is handling now (see :func:`post_pairs`)."""

    n: int = 0


IN_FLIGHT = web.AppKey("in_flight", InFlight)

_REASON = {
    401: "unauthorized",
    413: "too_large",
    400: "unparseable",
    422: "invalid",
    415: "unsupported",
}
# Routes anyone who reaches the port may read: the scrape target and the probes.
PUBLIC_PATHS = frozenset({"/metrics", "/health/live", "/health/ready"})


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts else None


def _experiment_json(e: ExperimentInfo) -> dict[str, Any]:
    return {
        "name": e.name,
        "started_at": _iso(e.started_at),
        "last_pair_at": _iso(e.last_pair_at),
        "prod_version": e.prod_version,
        "cand_version": e.cand_version,
        "task": e.task,
        "n_pairs": e.n_pairs,
        "config": e.config,
    }


def _parse_time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        ts = datetime.fromisoformat(raw)
    except ValueError:
        raise web.HTTPBadRequest(
            text=f'{{"error": "{name}: expected ISO 8601, e.g. 2026-11-22T10:00:00Z"}}',
            content_type="application/json",
        ) from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


# -- handlers -----------------------------------------------------------------------------------


async def post_pairs(request: web.Request) -> web.Response:
    """Store one batch. With ``--workers``, a worker that has another batch in hand when it
    answers closes the connection, so that the sender's next batch goes to whichever worker
    accepts it first, an idle one: a sender's keep-alive connection would otherwise stay on one
    worker however busy, and a few busy senders can land on the same one."""
    in_flight = request.app[IN_FLIGHT]
    in_flight.n += 1
    try:
        response = await _store_batch(request)
    finally:
        in_flight.n -= 1
    if in_flight.n and request.app[SETTINGS].workers > 1:
        response.force_close()
    return response


async def _store_batch(request: web.Request) -> web.Response:
    settings, metrics, store = request.app[SETTINGS], request.app[METRICS], request.app[STORE]
    # The limit travels with every answer, so a proxy cuts its batches below it.
    limit = {"X-Max-Body-Bytes": str(settings.max_body_bytes)}
    try:
        check_token(request.headers.get("Authorization"), settings.token)
        body = await read_body(request, settings.max_body_bytes)
        started = time.perf_counter()
        # Parsed by the store, in its turn (the CPU work waits for other writes: Store.ingest).
        parse = partial(screen_body, body, request.headers.get("Content-Type", ""))
        result = await store.ingest(parse)
    except IngestError as exc:
        metrics.rejected[_REASON.get(exc.status, "invalid")].inc()
        return web.json_response({"error": str(exc)}, status=exc.status, headers=limit)
    except (SQLAlchemyError, OSError, StoreError) as exc:
        metrics.rejected["store"].inc()
        log.error("storing a batch failed: %s", exc)
        return error_response(503, "the database is unavailable; retry later")
    except Exception:  # a bug must not look like a bad batch; the transaction rolled back
        metrics.rejected["store"].inc()
        log.exception("storing a batch failed")
        return error_response(500, "internal error while storing the batch; nothing was stored")
    metrics.ingest_seconds.observe(time.perf_counter() - started)
    metrics.batches.inc()
    metrics.pairs_received.inc(result.received)
    metrics.pairs_inserted.inc(result.inserted)
    metrics.pairs_duplicate.inc(result.duplicates)
    for refused in result.quarantined + result.repaired:
        metrics.quarantined[refused.reason].inc()
    # Each refused pair by its index in the batch and its reason; the rest are stored.
    return web.json_response(
        {
            "received": result.received,
            "inserted": result.inserted,
            "duplicates": result.duplicates,
            "quarantined": len(result.quarantined),
            "repaired": len(result.repaired),
            "refused": [
                {"index": r.index, "reason": r.reason, "detail": r.detail}
                for r in result.quarantined
            ],
            "experiments": list(result.experiments),
        },
        headers={"X-Max-Body-Bytes": str(settings.max_body_bytes)},
    )


async def post_drops(request: web.Request) -> web.Response:
    """A proxy's cumulative drop counts (``comparator.wire.DropReport``); idempotent."""
    settings = request.app[SETTINGS]
    try:
        check_token(request.headers.get("Authorization"), settings.token)
        body = await read_body(request, 64 * 1024)
    except IngestError as exc:  # 401 without the token, 413 past 64 KiB
        return error_response(exc.status, str(exc))
    try:
        report = DropReport.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        return error_response(422, f"{where}: {err['msg']}")
    name = request.match_info["name"]
    if not await request.app[STORE].record_drops(name, report.proxy_id, report.dropped):
        return error_response(404, "no such experiment")
    return web.json_response({"recorded": True})


async def list_experiments(request: web.Request) -> web.Response:
    exps = await request.app[STORE].list_experiments()
    return web.json_response({"experiments": [_experiment_json(e) for e in exps]})


async def _experiment_or_404(request: web.Request) -> str:
    name = request.match_info["name"]
    if await request.app[STORE].get_experiment(name) is None:
        raise web.HTTPNotFound(
            text='{"error": "no such experiment"}', content_type="application/json"
        )
    return name


async def summary(request: web.Request) -> web.Response:
    start, end = _parse_time(request, "from"), _parse_time(request, "to")
    by = request.query.get("by")
    if by is not None and not re.fullmatch(r"[a-z][a-z0-9_.-]{0,39}", by):
        return error_response(
            400, "by: a segment dimension is 1-40 of a-z 0-9 _ . - (a letter first)"
        )
    k_text = request.query.get("k", "10")
    if not (k_text.isascii() and k_text.isdigit() and len(k_text) < 4 and 2 <= int(k_text) <= 64):
        return error_response(400, f"k: expected an integer from 2 to 64, got {k_text[:40]!r}")
    name = await _experiment_or_404(request)
    try:
        body = await summarize(request.app[STORE], name, start, end, by=by, k=int(k_text))
    except UnknownDimension as exc:
        return error_response(400, str(exc))
    return web.json_response(body)


async def verdict(request: web.Request) -> web.Response:
    """The verdict as of ``at`` (default: now), computed and never stored: a stored look would
    join the running intersection and could be what ``shadowtee promote`` acts on, and that is
    for the comparator's own periodic look (and the CLI) alone. A future ``at`` is refused."""
    at = _parse_time(request, "at")
    now = datetime.now(UTC)
    if at is not None and at > now:
        return error_response(
            400, f"at: {at.isoformat()} is in the future (now {now.isoformat(timespec='seconds')})"
        )
    name = await _experiment_or_404(request)
    cache = request.app[POLICY]
    if "policy" not in cache:
        path = request.app[SETTINGS].policy
        try:
            cache["policy"] = load_policy(Path(path) if path else None)
        except ValueError as exc:  # PolicyError names the file and the key
            return error_response(500, f"policy: {exc}")
    try:
        result = await judge(request.app[STORE], name, cache["policy"], at, save=False)
    except UnknownExperiment:
        return error_response(404, "no such experiment")
    return web.json_response(result.to_json())


async def metrics_endpoint(request: web.Request) -> web.StreamResponse:
    registry = request.app[METRICS].registry
    metrics_dir = request.app[ROLE].metrics_dir
    if metrics_dir is not None:  # --workers: every worker's counters, and this one's gauges
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
        registry.register(request.app[LOOKS])
    # prometheus-client's handler: text or OpenMetrics as the scraper asks, gzip when accepted.
    return await make_aiohttp_handler(registry)(request)


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "live"})


async def ready(request: web.Request) -> web.Response:
    if await request.app[STORE].ready():
        return web.json_response({"status": "ready"})
    return error_response(503, "database unreachable or not migrated")


@web.middleware
async def require_token(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """With a token configured, refuse (401) every request outside :data:`PUBLIC_PATHS` that
    does not carry it; the ingest handlers check it again themselves."""
    token = request.app[SETTINGS].token
    if token is not None and request.path not in PUBLIC_PATHS:
        try:
            check_token(request.headers.get("Authorization"), token)
        except IngestError as exc:
            if request.path == "/v1/pairs":
                request.app[METRICS].rejected["unauthorized"].inc()
            response = error_response(exc.status, str(exc))
            response.headers["WWW-Authenticate"] = 'Bearer realm="shadowtee"'
            return response
    return await handler(request)


def add_routes(app: web.Application) -> None:
    """The HTTP surface of the module docstring."""
    app.router.add_post("/v1/pairs", post_pairs)
    app.router.add_get("/v1/experiments", list_experiments)
    app.router.add_post("/v1/experiments/{name}/drops", post_drops)
    app.router.add_get("/v1/experiments/{name}/summary", summary)
    app.router.add_get("/v1/experiments/{name}/verdict", verdict)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
