"""The data-port application: forward everything to production, tee some of it, pair the answers.

The handler does one thing per line: read the body once; hand the same ``bytes`` to production and
to :meth:`Tee.submit` (which returns at once); return production's response. It never awaits the
candidate. The client gets production's status, end-to-end headers and body unchanged — bodies are
never decompressed (``auto_decompress=False``) and large or unsized ones are streamed — plus the
``X-Shadow-Request-Id`` header; 502 when production cannot be reached, 504 when it times out.

Resources live in cleanup contexts (create → ``yield`` → close) so aiohttp's own shutdown runs them
in reverse order: stop teeing and drain in-flight tees, then flush pairs to the comparator (or the
spool), then close the client pools. Production, candidate and comparator each get their own
connection pool, so a slow candidate can never take a production connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from comparator.wire import Outcome
from proxy.headers import end_to_end
from proxy.metrics import ProxyCollector, ProxyStats
from proxy.outcomes import classify
from proxy.pairing import PairingBuffer, Side
from proxy.settings import ProxySettings
from proxy.shipper import Shipper
from proxy.spool import Spool
from proxy.tee import Tee, TeeRules
from proxy.upstream import CandidateClient

__all__ = ["STATE", "ProxyState", "create_app"]

log = logging.getLogger("shadowtee.proxy")

# Responses up to this size (with a Content-Length) are read whole and sent in one write; larger or
# unsized ones are streamed chunk by chunk so memory stays flat for multi-MiB bodies.
INLINE_MAX_BYTES = 1024 * 1024
# Headers the client library must not invent on the way to production or the candidate.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_REAP_INTERVAL_S = 0.1


@dataclass
class ProxyState:
    """Everything the handlers and the admin port read; built once by the cleanup contexts."""

    settings: ProxySettings
    stats: ProxyStats
    registry: CollectorRegistry
    prod_session: aiohttp.ClientSession | None = None
    ship_session: aiohttp.ClientSession | None = None
    shipper: Shipper | None = None
    pairing: PairingBuffer | None = None
    tee: Tee | None = None
    draining: bool = False


STATE = web.AppKey("state", ProxyState)


def _session(limit: int, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=30),
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=_NO_AUTO_HEADERS,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    s = state.settings
    state.prod_session = _session(
        s.prod_pool_size,
        aiohttp.ClientTimeout(
            total=None, sock_connect=s.prod_timeout_s, sock_read=s.prod_timeout_s
        ),
    )
    state.ship_session = _session(4, aiohttp.ClientTimeout(total=s.ship_timeout_ms / 1000.0))
    yield
    for session in (state.prod_session, state.ship_session):
        await session.close()


async def _shipper_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    s = state.settings
    if s.comparator is None:
        log.warning("no --comparator: pairs are counted as dropped (reason no_comparator)")
    state.shipper = Shipper(
        session=state.ship_session,
        comparator_url=s.comparator,
        token=s.comparator_token.get_secret_value() if s.comparator_token else None,
        experiment=s.experiment,
        spool=Spool(s.spool_dir, s.max_spool_bytes),
        stats=state.stats,
        batch_size=s.batch_size,
        flush_interval_s=s.flush_interval_ms / 1000.0,
        timeout_s=s.ship_timeout_ms / 1000.0,
        retries=s.ship_retries,
        backoff_s=s.retry_backoff_ms / 1000.0,
        max_queue=s.ship_queue_max_pairs,
        max_body_bytes=s.max_pair_body_bytes,
    )
    task = asyncio.create_task(state.shipper.run(), name="shadowtee-shipper")
    yield
    await state.shipper.close()
    await task


async def _reap(pairing: PairingBuffer) -> None:
    while True:
        await asyncio.sleep(_REAP_INTERVAL_S)
        pairing.expire(time.monotonic())


async def _tee_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    s = state.settings
    assert state.shipper is not None
    state.pairing = PairingBuffer(
        max_pairs=s.buffer_max_pairs,
        on_emit=state.shipper.enqueue,
        candidate_deadline_ms=s.shadow_timeout_ms,
        keep_request_body=s.include_request_body,
    )
    state.tee = Tee(
        client=CandidateClient(
            s.candidate,
            linger_s=s.candidate_linger_ms / 1000.0,
            max_body_bytes=s.client_max_size,
            # Only a pair's worth of the candidate's answer is held; the rest is counted, not kept.
            keep_bytes=s.max_pair_body_bytes,
        ),
        deadline_s=s.shadow_timeout_s,
        max_inflight=s.max_inflight,
        max_body_bytes=s.max_tee_body_bytes,
        redact=s.redact_headers,
        forward_auth=s.forward_auth_to_candidate,
        pairing=state.pairing,
        stats=state.stats,
        # A pair waits for the slower of the two sides, plus a margin for the event loop.
        pair_ttl_s=max(s.shadow_timeout_s, s.prod_timeout_s) + 1.0,
    )
    reaper = asyncio.create_task(_reap(state.pairing), name="shadowtee-pair-reaper")
    yield
    state.draining = True
    cancelled = await state.tee.drain(s.tee_grace_ms / 1000.0)
    if cancelled:
        log.warning(
            "shutdown: cancelled %d candidate calls still running after the grace", cancelled
        )
    await state.tee.close()
    reaper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reaper
    state.pairing.drain()


def _make_handler(
    state: ProxyState,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    s = state.settings
    rid_header = s.request_id_header
    prod_url = s.prod
    rules = TeeRules(s.tee_routes, s.tee_methods, s.sample_rate)
    key_header = None if s.sample_key == "request_id" else s.sample_key
    max_pair_body = s.max_pair_body_bytes
    body_timeout_s = s.client_body_timeout_s
    stats = state.stats
    # Unique, cheap request ids: a random per-process prefix and a counter.
    prefix = os.urandom(6).hex() + "-"
    counter = itertools.count(1)

    def _gateway_error(exc: BaseException, paired: bool, rid: str) -> web.Response:
        """502 when production could not be reached or broke off, 504 when it timed out."""
        outcome, reason = classify(exc, s.prod_timeout_ms)
        if paired:
            state.pairing.set_prod(rid, Side(outcome, error=reason))  # type: ignore[union-attr]
        if outcome is Outcome.TIMEOUT:
            stats.prod_timeouts += 1
            return web.Response(status=504, text=f"production timed out: {reason}\n")
        stats.prod_unreachable += 1
        return web.Response(status=502, text=f"production unreachable: {reason}\n")

    async def handle(request: web.Request) -> web.StreamResponse:
        stats.requests += 1
        pairing = state.pairing
        assert pairing is not None and state.tee is not None and state.prod_session is not None
        if request.content.is_eof():  # the usual case: the whole body came with the head
            body = await request.read()
        else:
            try:
                async with asyncio.timeout(body_timeout_s):
                    body = await request.read()
            except TimeoutError:
                stats.client_body_timeouts += 1
                slow = web.Response(status=408, text="request body timed out\n")
                slow.force_close()
                return slow
        rid = request.headers.get(rid_header)
        # A client may bring its own id (so a replay samples the same requests), but one that is
        # too long or already waiting for its pair would mix two requests up: mint a new one.
        if not rid or len(rid) > 200 or rid in pairing:
            rid = prefix + format(next(counter), "x")
        headers = end_to_end(request.headers, also_drop=("host",))
        headers[rid_header] = rid
        method = request.method
        path_qs = request.raw_path
        paired = False
        if rules.matches(method, request.path):
            key = rid if key_header is None else request.headers.get(key_header, rid)
            if rules.sampled(key):
                paired = state.tee.submit(rid, method, path_qs, request.path, headers, body)
            else:
                stats.not_sampled += 1

        start = time.perf_counter()
        try:
            resp = await state.prod_session.request(
                method,
                prod_url + path_qs,
                data=body or None,
                headers=headers,
                allow_redirects=False,
            )
        except asyncio.CancelledError:
            if paired:
                pairing.set_prod(rid, Side(Outcome.ERROR, error="client request cancelled"))
            raise
        except Exception as exc:
            return _gateway_error(exc, paired, rid)

        out_headers = end_to_end(resp.headers)
        out_headers[rid_header] = rid
        length = resp.content_length
        response: web.StreamResponse
        data: bytes | None
        if length is not None and length <= INLINE_MAX_BYTES:
            try:
                data = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Nothing was sent to the client yet, so it still gets a clean gateway error.
                resp.release()
                return _gateway_error(exc, paired, rid)
            elapsed = time.perf_counter() - start
            response = web.Response(
                status=resp.status, reason=resp.reason, headers=out_headers, body=data
            )
        else:
            response, data, failure = await _stream(
                request, resp, out_headers, paired, max_pair_body
            )
            elapsed = time.perf_counter() - start
            if failure is not None:
                stats.prod_broken_bodies += 1
                if paired:
                    outcome, reason = classify(failure, s.prod_timeout_ms)
                    pairing.set_prod(rid, Side(outcome, status=resp.status, error=reason))
                return response
        stats.prod_latency.observe(elapsed)
        if paired:
            pairing.set_prod(
                rid,
                Side(
                    Outcome.OK,
                    status=resp.status,
                    latency_ms=elapsed * 1000.0,
                    model_version=resp.headers.get("X-Model-Version"),
                    body=data,
                    body_bytes=len(data) if data is not None else None,
                ),
            )
        return response

    return handle


async def _stream(
    request: web.Request,
    resp: aiohttp.ClientResponse,
    headers: object,
    keep: bool,
    max_keep: int,
) -> tuple[web.StreamResponse, bytes | None, BaseException | None]:
    """Copy a large or unsized production body to the client chunk by chunk.

    Returns the response, the body bytes when ``keep`` and small enough for a pair, and the
    production failure if the body broke off. Once the head is sent the status cannot change, so
    a broken production body aborts the client connection (the client sees a truncated response,
    as it would from production). A client that hangs up is routine, not an error: the copy
    simply stops.
    """
    out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)  # type: ignore[arg-type]
    kept: list[bytes] | None = [] if keep else None
    size = 0
    failure: BaseException | None = None
    try:
        await out.prepare(request)
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if kept is not None:
                if size <= max_keep:
                    kept.append(chunk)
                else:
                    kept = None
            await out.write(chunk)
        await out.write_eof()
    except ConnectionError:  # the client went away (aiohttp's reset errors derive from it)
        pass
    except (aiohttp.ClientError, TimeoutError) as exc:
        failure = exc
        if request.transport is not None:
            request.transport.abort()
    finally:
        resp.release()
    # A body too large to keep travels in the pair as its size only.
    return out, (b"".join(kept) if kept is not None and failure is None else None), failure


def create_app(
    settings: ProxySettings, registry: CollectorRegistry | None = None
) -> web.Application:
    """The data-port application; its state (``app[STATE]``) also feeds the admin port."""
    app = web.Application(client_max_size=settings.client_max_size)
    state = ProxyState(
        settings=settings, stats=ProxyStats(), registry=registry or CollectorRegistry()
    )
    app[STATE] = state
    state.registry.register(
        ProxyCollector(
            state.stats,
            {
                "tee_inflight": ("Candidate calls in flight.", lambda: state.tee.inflight if state.tee else 0),
                "tee_max_inflight": ("Bound on candidate calls in flight.", lambda: settings.max_inflight),
                "pairing_buffer_pairs": ("Pairs waiting for their other half.", lambda: len(state.pairing) if state.pairing else 0),
                "ship_queue_pairs": ("Finished pairs waiting to be shipped.", lambda: state.shipper.queued if state.shipper else 0),
                "spool_batches": ("Batches spooled on disk.", lambda: len(state.shipper.spool) if state.shipper else 0),
                "spool_pairs": ("Pairs spooled on disk.", lambda: state.shipper.spool.pairs if state.shipper else 0),
                "spool_bytes": ("Bytes spooled on disk.", lambda: state.shipper.spool.bytes if state.shipper else 0),
            },
        )
    )  # fmt: skip
    app.cleanup_ctx.append(_sessions_ctx)
    app.cleanup_ctx.append(_shipper_ctx)
    app.cleanup_ctx.append(_tee_ctx)
    app.router.add_route("*", "/{tail:.*}", _make_handler(state))
    return app
