"""The data port: forward everything to production, tee some of it, pair the answers.

The handler does one thing per line: take the request (body read once, by the server); hand the
same ``bytes`` to production and to :meth:`Tee.submit` (which returns at once); write production's
response. It never awaits the candidate. The client gets production's status, end-to-end headers
and body unchanged — bodies are never decompressed, and large or unsized ones are streamed with
back-pressure — plus the ``X-Shadow-Request-Id`` header; 502 when production cannot be reached,
504 when it times out.

:class:`DataPort` owns the resources and starts and stops them in order: the production pool,
the shipper, then the pairing buffer and the tee; on the way down, stop teeing and drain
in-flight tees, then flush pairs to the comparator (or the spool), then close the pools.
Production, candidate and comparator each get their own connection pool, so a slow candidate can
never take a production connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import secrets
import time
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry

from contract import MINTED_ABOVE
from contract.outcomes import Outcome, classify
from proxy import validate
from proxy.headers import drop_set, request_lines, response_lines
from proxy.http1 import Connection, Request, simple_response
from proxy.metrics import ProxyCollector, ProxyStats
from proxy.pair_json import segment_extractor
from proxy.pairing import PairingBuffer, Side
from proxy.settings import ProxySettings
from proxy.shipper import Shipper
from proxy.spool import Spool
from proxy.tee import Tee, TeeRules
from proxy.upstream import (
    CandidateClient,
    ProductionClient,
    ProductionResponse,
    UpstreamProtocolError,
    encode_request,
)

__all__ = ["DataPort", "ProxyState"]

log = logging.getLogger("shadowtee.proxy")

# Responses up to this size (with a Content-Length) are read whole and sent in one write; larger or
# unsized ones are streamed chunk by chunk so memory stays flat for multi-MiB bodies.
INLINE_MAX_BYTES = 1024 * 1024
_REAP_INTERVAL_S = 0.1


@dataclass
class ProxyState:
    """Everything the handler and the admin port read, built whole by :class:`DataPort`."""

    settings: ProxySettings
    stats: ProxyStats
    registry: CollectorRegistry
    prod: ProductionClient
    shipper: Shipper
    pairing: PairingBuffer
    tee: Tee
    rules: TeeRules  # the live tee control changes its sample rate
    draining: bool = False

    def gauges(self) -> dict[str, float]:
        """The live gauges, read now: one source for ``/metrics`` and ``/admin/status``."""
        spool = self.shipper.spool
        return {
            "tee_inflight": self.tee.inflight,
            "tee_max_inflight": self.settings.max_inflight,
            "pairing_buffer_pairs": len(self.pairing),
            "ship_queue_pairs": self.shipper.queued,
            "spool_batches": len(spool),
            "spool_pairs": spool.pairs,
            "spool_bytes": spool.bytes,
        }


class DataPort:
    """The proxy's resources and its request handler.

    Built inside the running event loop. Each resource registers its own closing on one
    :class:`~contextlib.AsyncExitStack` as it is made (the pools and the comparator session here,
    the background tasks in :meth:`start`), so :meth:`stop` closes them in reverse order: stop
    teeing and drain the in-flight tees, stop the reaper, close every open pair, flush them to
    the comparator (or the spool), then close the pools.
    """

    def __init__(self, settings: ProxySettings, registry: CollectorRegistry | None = None):
        s = settings
        self._exits = exits = contextlib.AsyncExitStack()
        stats = ProxyStats()
        prod = ProductionClient(
            s.prod,
            limit=s.prod_pool_size,
            timeout_s=s.prod_timeout_s,
            inline_bytes=INLINE_MAX_BYTES,
        )
        exits.push_async_callback(prod.close)
        ship_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=s.ship_timeout_ms / 1000.0),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        exits.push_async_callback(ship_session.close)
        if s.comparator is None:
            log.warning("no --comparator: pairs are counted as dropped (reason no_comparator)")
        shipper = Shipper(
            session=ship_session,
            comparator_url=list(s.comparator_urls) or None,
            token=s.comparator_token.get_secret_value() if s.comparator_token else None,
            experiment=s.experiment,
            spool=Spool(s.spool_dir, s.max_spool_bytes),
            stats=stats,
            batch_size=s.batch_size,
            flush_interval_s=s.flush_interval_ms / 1000.0,
            timeout_s=s.ship_timeout_ms / 1000.0,
            retries=s.ship_retries,
            backoff_s=s.retry_backoff_ms / 1000.0,
            max_queue=s.ship_queue_max_pairs,
            max_body_bytes=s.max_pair_body_bytes,
            max_batch_bytes=s.max_batch_bytes,
            poison_after=s.ship_poison_after,
        )
        pairing = PairingBuffer(
            max_pairs=s.buffer_max_pairs,
            on_emit=shipper.enqueue,
            candidate_deadline_ms=s.shadow_timeout_ms,
            keep_request_body=s.include_request_body,
            segments=segment_extractor(s.segment_route, s.segment_pointers),
            segment_versions=s.segment_model_versions,
        )
        tee = Tee(
            client=CandidateClient(
                s.candidate,
                linger_s=s.candidate_linger_ms / 1000.0,
                max_body_bytes=s.client_max_size,
                # Only a pair's worth of the candidate's answer is held; the rest is counted.
                keep_bytes=s.max_pair_body_bytes,
            ),
            deadline_s=s.shadow_timeout_s,
            max_inflight=s.max_inflight,
            max_body_bytes=s.max_tee_body_bytes,
            redact=s.redact_headers,
            forward_auth=s.forward_auth_to_candidate,
            pairing=pairing,
            stats=stats,
            # A pair waits for the slower of the two sides, plus a margin for the event loop.
            pair_ttl_s=max(s.shadow_timeout_s, s.prod_timeout_s) + 1.0,
            segment_headers=s.segment_headers,
        )
        self._rules = TeeRules(s.tee_routes, s.tee_methods, s.sample_rate)
        self.state = state = ProxyState(
            settings=settings,
            stats=stats,
            registry=registry or CollectorRegistry(),
            prod=prod,
            shipper=shipper,
            pairing=pairing,
            tee=tee,
            rules=self._rules,
        )
        state.registry.register(ProxyCollector(stats, state.gauges))
        self._rid_name = s.request_id_header.encode("latin-1")
        self._rid_lower = self._rid_name.lower()
        self._key_header = (
            None if s.sample_key == "request_id" else s.sample_key.lower().encode("latin-1")
        )
        # Request headers that never go upstream as they came: the proxy sets Host, the framing
        # and the request id itself, and answers Expect on its own.
        self._extra_drop = ("host", "content-length", "expect", s.request_id_header)
        self._req_drop = drop_set(self._extra_drop)
        self._resp_drop = drop_set((s.request_id_header,))
        # Minted request ids: a random per-process prefix and a counter (unique), and 64 random
        # bits per id (unguessable: see _pair_key).
        self._prefix = os.urandom(6).hex() + "-"
        self._counter = itertools.count(1)
        self._validator = validate.install(settings, state.registry)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background tasks: the shipper and the pair reaper."""
        state, exits = self.state, self._exits
        shipper = asyncio.create_task(state.shipper.run(), name="shadowtee-shipper")
        exits.push_async_callback(_stop_shipping, state.shipper, shipper)
        exits.callback(lambda: state.pairing.drain(time.monotonic()))
        reaper = asyncio.create_task(_reap(state.pairing), name="shadowtee-pair-reaper")
        exits.push_async_callback(_cancel, reaper)
        exits.push_async_callback(_stop_teeing, state.tee, state.settings.tee_grace_ms / 1000.0)

    async def stop(self) -> None:
        """Stop teeing, drain tees (bounded), flush every pair, close the pools. Idempotent."""
        self.state.draining = True
        await self._exits.aclose()

    # --- the request path ---------------------------------------------------------------------

    def _gateway_error(self, exc: BaseException, rid: str, paired: bool, keep: bool) -> bytes:
        """502 when production could not be reached or broke off, 504 when it timed out."""
        state = self.state
        outcome, reason = classify(exc, state.settings.prod_timeout_ms)
        if paired:
            # A timeout is a right-censored latency, at least the deadline: not a missing one.
            waited = state.settings.prod_timeout_ms if outcome is Outcome.TIMEOUT else None
            side = Side(outcome, latency_ms=waited, error=reason)
            state.pairing.set_prod(rid, side)
        if outcome is Outcome.TIMEOUT:
            state.stats.prod_timeouts += 1
            return simple_response(504, f"production timed out: {reason}\n", close=not keep)
        state.stats.prod_unreachable += 1
        return simple_response(502, f"production unreachable: {reason}\n", close=not keep)

    def _client_abort(self, pair_id: str, paired: bool) -> bool:
        """The client broke off its streamed body (FIN or reset): a client abort, not a
        production failure; no answer is attempted on its socket, which is closed."""
        self.state.stats.client_aborts += 1
        if paired:
            side = Side(Outcome.ERROR, error="client broke off its request body")
            self.state.pairing.set_prod(pair_id, side)
        return False

    def _pair_key(self, client_id: str) -> tuple[str, str]:
        """The request id sent upstream and to the client, and the key of the request's pair.

        A client may bring its own id: it goes upstream and back unchanged, and it is the sampling
        key (so a replay samples the same requests). But the pair is keyed by the client's id plus
        64 random bits minted here, so that no id a client chooses can meet another request's pair
        — in the pairing buffer or in the comparator, which keeps one pair per key and counts a
        second as a retried duplicate. Without an id (or with one over MINTED_ABOVE characters)
        the proxy mints one: unique (prefix, counter) and unguessable (64 random bits), so no
        client can pre-claim the id another request will get.
        """
        if not client_id or len(client_id) > MINTED_ABOVE:
            minted = f"{self._prefix}{next(self._counter):x}-{secrets.token_hex(8)}"
            return minted, minted
        return client_id, f"{client_id}~{secrets.token_hex(8)}"

    async def handle(self, req: Request, conn: Connection) -> bool:
        """Answer one request from production; returns whether the connection stays open."""
        state = self.state
        stats = state.stats
        stats.requests += 1
        pairing, tee, prod = state.pairing, state.tee, state.prod
        if self._validator is not None:  # validate_inputs: a 400 before production sees it
            refused = await self._validator.refusal(req)
            if refused is not None:
                keep = req.keep_alive and not state.draining
                conn.write(simple_response(400, f"{refused}\n", close=not keep))
                return keep
        raw_rid = req.header(self._rid_lower)
        rid = raw_rid.decode("latin-1") if raw_rid else ""
        rid, pair_id = self._pair_key(rid)
        rid_bytes = rid.encode("latin-1")
        drop = (
            self._req_drop if req.connection is None else drop_set(self._extra_drop, req.connection)
        )
        headers = request_lines(req.headers, drop)
        headers.append((self._rid_name, rid_bytes))
        method = req.method
        body = req.body
        paired = False
        # The path is decoded only for a method that may be teed.
        if method in self._rules.methods and self._rules.matches(method, path := req.path):
            key_header = self._key_header
            key = rid
            if key_header is not None:
                raw_key = req.header(key_header)
                if raw_key:
                    key = raw_key.decode("latin-1")
            if self._rules.sampled(key):
                incoming = req.stream
                if incoming is not None and incoming.length > tee.max_body_bytes:
                    # Too large to tee: its pair records it as skipped, and it is forwarded as
                    # it arrives, hashed on the way (never held whole).
                    incoming.digest = hashlib.sha256()
                    paired = tee.skip_unread(
                        pair_id, path, incoming.length, headers, incoming.digest.hexdigest
                    )
                else:
                    # A large body, still arriving: teed, so read whole (unless the paused tee
                    # only counts it: then it is forwarded as it arrives, like one not sampled).
                    if incoming is not None and not tee.turning_away:
                        try:
                            body = await req.read_body()
                        except OSError:
                            if incoming.client_gone:  # the client broke off before its end
                                return self._client_abort(pair_id, False)
                            raise
                    paired = tee.submit(pair_id, method, req.target, path, headers, body)
            else:
                stats.not_sampled += 1

        keep = req.keep_alive and not state.draining
        stream = req.unread_body()  # a large body that is not teed: forwarded as it arrives
        length = None if stream is None else stream.length
        target = prod.prefix + req.target
        data = encode_request(method, target, prod.host_header, headers, body, length=length)
        start = time.perf_counter()
        try:
            resp = await prod.request(data, method, stream)
        except asyncio.CancelledError:
            if paired:
                pairing.set_prod(pair_id, Side(Outcome.ERROR, error="client request cancelled"))
            raise
        except Exception as exc:
            if stream is not None and stream.client_gone:  # the client broke off: nobody to answer
                return self._client_abort(pair_id, paired)
            conn.write(self._gateway_error(exc, pair_id, paired, keep))
            return keep

        head = [b"HTTP/1.1 %d %s" % (resp.status, resp.reason)]
        head += response_lines(itertools.islice(resp.lines, 1, None), self._resp_drop)
        head.append(self._rid_name + b": " + rid_bytes)
        if resp.body is not None:  # the whole body is here (or there is none)
            if not keep:
                head.append(b"Connection: close")
            elif not req.http11:
                head.append(b"Connection: keep-alive")
            head.append(b"\r\n")
            conn.write(b"\r\n".join(head) + resp.body)
            elapsed = time.perf_counter() - start
            data_kept: bytes | None = resp.body
        else:
            keep, data_kept, failure = await self._stream(req, conn, resp, head, keep, paired)
            elapsed = time.perf_counter() - start
            if failure is not None:
                stats.prod_broken_bodies += 1
                if paired:
                    outcome, reason = classify(failure, state.settings.prod_timeout_ms)
                    waited = state.settings.prod_timeout_ms if outcome is Outcome.TIMEOUT else None
                    side = Side(outcome, status=resp.status, latency_ms=waited, error=reason)
                    pairing.set_prod(pair_id, side)
                return False
        stats.prod_latency.observe(elapsed)
        if paired:
            pairing.set_prod(
                pair_id,
                Side(
                    Outcome.OK,
                    status=resp.status,
                    latency_ms=elapsed * 1000.0,
                    model_version=resp.model_version,
                    body=data_kept,
                    body_bytes=len(data_kept) if data_kept is not None else None,
                ),
            )
        return keep

    async def _stream(
        self,
        req: Request,
        conn: Connection,
        resp: ProductionResponse,
        head: list[bytes],
        keep: bool,
        paired: bool,
    ) -> tuple[bool, bytes | None, BaseException | None]:
        """Copy a large or unsized production body to the client chunk by chunk.

        Returns whether the connection stays open, the body bytes when ``paired`` and small
        enough for a pair, and the production failure if the body broke off. Once the head is
        sent the status cannot change, so a broken production body aborts the client connection
        (the client sees a truncated response, as it would from production). A client that
        hangs up is routine, not an error: the copy simply stops.
        """
        chunked = resp.length is None and req.http11
        if chunked:
            head.append(b"Transfer-Encoding: chunked")
        elif resp.length is None:
            keep = False  # an HTTP/1.0 client: the body ends when the connection does
        if not keep:
            head.append(b"Connection: close")
        elif not req.http11:
            head.append(b"Connection: keep-alive")
        head.append(b"\r\n")
        conn.write(b"\r\n".join(head))
        max_keep = self.state.settings.max_pair_body_bytes
        kept: list[bytes] | None = [] if paired else None
        size = 0
        try:
            while True:
                chunk = await resp.read_chunk()
                if not chunk:
                    break
                if conn.closed:  # the client went away: stop reading production
                    resp.abandon()
                    return False, None, None
                size += len(chunk)
                if kept is not None:
                    if size <= max_keep:
                        kept.append(chunk)
                    else:
                        kept = None
                conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drain()
        except (OSError, UpstreamProtocolError, TimeoutError) as exc:
            conn.abort()
            return False, None, exc
        if chunked:
            conn.write(b"0\r\n\r\n")
        if conn.closed:
            return False, None, None
        # A body too large to keep travels in the pair as its size only.
        return keep, (b"".join(kept) if kept is not None else None), None


async def _stop_teeing(tee: Tee, grace_s: float) -> None:
    cancelled = await tee.drain(grace_s)
    if cancelled:
        log.warning(
            "shutdown: cancelled %d candidate calls still running after the grace", cancelled
        )
    await tee.close()


async def _stop_shipping(shipper: Shipper, task: asyncio.Task[None]) -> None:
    await shipper.close()
    await task


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _reap(pairing: PairingBuffer) -> None:
    while True:
        await asyncio.sleep(_REAP_INTERVAL_S)
        pairing.expire(time.monotonic())
