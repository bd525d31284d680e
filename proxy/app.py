"""The data port: forward everything to production, tee some of it, pair the answers.

The handler does one thing per line: take the request (body read once, by the server); hand the
same ``bytes`` to production and to :meth:`Tee.submit` (which returns at once); write production's
response. It never awaits the candidate. The client gets production's status, end-to-end headers
and body unchanged — bodies are never decompressed, and large or unsized ones are streamed with
back-pressure — plus the ``X-Shadow-Request-Id`` header; 502 when production cannot be reached,
504 when it times out.

:class:`DataPort` holds the running state (:mod:`proxy.state`: built whole, closed in reverse
order) and the request path in a few named steps: identify, tee, forward, answer, report.
Production, candidate and comparator each get their own connection pool, so a slow candidate can
never take a production connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import secrets
import time

from prometheus_client import CollectorRegistry

from contract import MINTED_ABOVE
from contract.outcomes import Outcome, classify
from proxy import validate
from proxy.headers import drop_set, request_lines, response_lines
from proxy.http.body import BodyStream
from proxy.http1 import Connection, Request, simple_response
from proxy.pairing import Side
from proxy.settings import ProxySettings
from proxy.state import build, start_tasks
from proxy.upstream import (
    ProductionResponse,
    UpstreamProtocolError,
    encode_request,
)

__all__ = ["DataPort"]

_TOKENS_PER_READ = 256


class DataPort:
    """The proxy's resources and its request handler. Built inside the running event loop."""

    def __init__(self, settings: ProxySettings, registry: CollectorRegistry | None = None):
        s = settings
        self._exits = contextlib.AsyncExitStack()
        self.state = state = build(settings, registry, self._exits)
        self._rules = state.rules
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
        self._tokens: list[str] = []  # random 64-bit ids read ahead (see _random_hex)
        self._validator = validate.install(settings, state.registry)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background tasks: the shipper and the pair reaper."""
        start_tasks(self.state, self._exits)

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
            minted = f"{self._prefix}{next(self._counter):x}-{self._random_hex()}"
            return minted, minted
        return client_id, f"{client_id}~{self._random_hex()}"

    def _random_hex(self) -> str:
        """64 random bits as 16 hex digits, from the OS's CSPRNG (what ``secrets`` uses), read
        256 ids at a time: one call per request instead of four and a system call."""
        tokens = self._tokens
        if not tokens:
            pool = secrets.token_hex(8 * _TOKENS_PER_READ)
            tokens.extend(pool[i : i + 16] for i in range(0, len(pool), 16))
        return tokens.pop()

    async def handle(self, req: Request, conn: Connection) -> bool:
        """Answer one request from production; returns whether the connection stays open."""
        state = self.state
        state.stats.requests += 1
        if self._validator is not None:  # validate_inputs: a 400 before production sees it
            refused = await self._validator.refusal(req)
            if refused is not None:
                keep = req.keep_alive and not state.draining
                conn.write(simple_response(400, f"{refused}\n", close=not keep))
                return keep
        rid, rid_bytes, pair_id, headers = self._identify(req)
        # Each step is a plain call when it has nothing to wait for (the usual case: the body
        # is here, production's answer too): a coroutine per step costs every request.
        if req.stream is None:
            body = req.body
            paired = self._tee(req, rid, pair_id, headers, body)
        else:
            teed = await self._tee_arriving(req, rid, pair_id, headers)
            if teed is None:  # the client broke off the body read whole for the tee
                return self._client_abort(pair_id, False)
            paired, body = teed
        keep = req.keep_alive and not state.draining
        stream = req.unread_body()  # a large body that is not teed: forwarded as it arrives
        start = time.perf_counter()
        try:
            resp = await state.prod.request(
                self._forward(req, headers, body, stream), req.method, stream
            )
        except asyncio.CancelledError:
            if paired:
                side = Side(Outcome.ERROR, error="client request cancelled")
                state.pairing.set_prod(pair_id, side)
            raise
        except Exception as exc:
            if stream is not None and stream.client_gone:  # the client broke off: nobody to answer
                return self._client_abort(pair_id, paired)
            conn.write(self._gateway_error(exc, pair_id, paired, keep))
            return keep
        head = self._answer_head(resp, rid_bytes)
        kept: bytes | None = resp.body
        failure: BaseException | None = None
        if kept is not None:
            keep = self._answer(req, conn, kept, head, keep)
        else:
            keep, kept, failure = await self._stream(req, conn, resp, head, keep, paired)
        elapsed = time.perf_counter() - start
        if failure is not None:
            self._broken_body(failure, resp, pair_id, paired)
            return False
        state.stats.prod_latency.observe(elapsed)
        if paired:
            side = Side(
                Outcome.OK,
                status=resp.status,
                latency_ms=elapsed * 1000.0,
                model_version=resp.model_version,
                body=kept,
                body_bytes=len(kept) if kept is not None else None,
            )
            state.pairing.set_prod(pair_id, side)
        return keep

    def _identify(self, req: Request) -> tuple[str, bytes, str, list[tuple[bytes, bytes]]]:
        """The request id (as text and bytes), the pair's key, and the headers that go upstream
        (with the id)."""
        raw_rid = req.header(self._rid_lower)
        rid, pair_id = self._pair_key(raw_rid.decode("latin-1") if raw_rid else "")
        drop = (
            self._req_drop if req.connection is None else drop_set(self._extra_drop, req.connection)
        )
        headers = request_lines(req.headers, drop, req.names)
        rid_bytes = rid.encode("latin-1")
        headers.append((self._rid_name, rid_bytes))
        return rid, rid_bytes, pair_id, headers

    def _tee_path(self, req: Request, rid: str) -> str | None:
        """The request's path when its route and method match and it is sampled, else None."""
        method, rules = req.method, self._rules
        # The path is decoded only for a method that may be teed.
        if method not in rules.methods or not rules.matches(method, path := req.path):
            return None
        key = rid
        if self._key_header is not None:
            raw_key = req.header(self._key_header)
            if raw_key:
                key = raw_key.decode("latin-1")
        if not rules.sampled(key):
            self.state.stats.not_sampled += 1
            return None
        return path

    def _tee(
        self,
        req: Request,
        rid: str,
        pair_id: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> bool:
        """Tee a request whose body is here when it is to be teed: whether a pair was opened."""
        path = self._tee_path(req, rid)
        if path is None:
            return False
        return self.state.tee.submit(pair_id, req.method, req.target, path, headers, body)

    async def _tee_arriving(
        self, req: Request, rid: str, pair_id: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[bool, bytes] | None:
        """:meth:`_tee` for a large body still arriving: whether a pair was opened, and the
        body to forward (read whole when it is teed). None when the client broke off a body
        being read whole."""
        body, tee, incoming = req.body, self.state.tee, req.stream
        path = self._tee_path(req, rid)
        if path is None or incoming is None:
            return False, body
        if incoming.length > tee.max_body_bytes:
            # Too large to tee: its pair records it as skipped, and it is forwarded as it
            # arrives, hashed on the way (never held whole).
            incoming.digest = hashlib.sha256()
            digest = incoming.digest.hexdigest
            return tee.skip_unread(pair_id, path, incoming.length, headers, digest), body
        # Teed, so read whole (unless the paused tee only counts it: then it is forwarded as it
        # arrives, like one not sampled).
        if not tee.turning_away:
            try:
                body = await req.read_body()
            except OSError:
                if incoming.client_gone:  # the client broke off before its end
                    return None
                raise
        return tee.submit(pair_id, req.method, req.target, path, headers, body), body

    def _forward(
        self,
        req: Request,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        stream: BodyStream | None,
    ) -> bytes:
        """The request as production gets it (only its head when the body is streamed)."""
        prod = self.state.prod
        length = None if stream is None else stream.length
        target = prod.prefix + req.target
        return encode_request(req.method, target, prod.host_header, headers, body, length=length)

    def _answer_head(self, resp: ProductionResponse, rid_bytes: bytes) -> list[bytes]:
        """Production's status line and end-to-end headers, with the request id."""
        head = [b"HTTP/1.1 %d %s" % (resp.status, resp.reason)]
        head += response_lines(itertools.islice(resp.lines, 1, None), self._resp_drop)
        head.append(self._rid_name + b": " + rid_bytes)
        return head

    def _answer(
        self,
        req: Request,
        conn: Connection,
        body: bytes,
        head: list[bytes],
        keep: bool,
    ) -> bool:
        """Write production's answer, whose body is here, to the client in one write; returns
        whether the connection stays open."""
        if not keep:
            head.append(b"Connection: close")
        elif not req.http11:
            head.append(b"Connection: keep-alive")
        head.append(b"\r\n")
        conn.write(b"\r\n".join(head) + body)
        return keep

    def _broken_body(
        self, failure: BaseException, resp: ProductionResponse, pair_id: str, paired: bool
    ) -> None:
        """Production's body broke off after its head went to the client."""
        state = self.state
        state.stats.prod_broken_bodies += 1
        if paired:
            outcome, reason = classify(failure, state.settings.prod_timeout_ms)
            waited = state.settings.prod_timeout_ms if outcome is Outcome.TIMEOUT else None
            side = Side(outcome, status=resp.status, latency_ms=waited, error=reason)
            state.pairing.set_prod(pair_id, side)

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
