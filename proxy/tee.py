"""The tee: decide which requests go to the candidate, and send them without anyone waiting.

:class:`TeeRules` is pure logic (route globs, methods, deterministic sampling). :class:`Tee` owns a
bounded set of tasks that belong to the application — not to the request handler, whose task dies
when the client disconnects — and :meth:`Tee.submit` is synchronous: it opens the pair, starts the
candidate call and returns at once. Past ``max_inflight`` calls the tee is shed and counted; a body
over ``max_tee_body_bytes`` is forwarded to production but never to the candidate, and counted.
Each candidate call runs under one hard deadline covering connect, send and the whole response.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Iterable

from comparator.wire import Outcome
from proxy.headers import candidate_lines
from proxy.metrics import ProxyStats
from proxy.outcomes import classify
from proxy.pairing import PairingBuffer, Side
from proxy.upstream import CandidateClient, encode_request

__all__ = ["Tee", "TeeRules"]

_MAX_ROUTE_CACHE = 4096


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """``*`` matches one path segment (no ``/``); everything else is literal."""
    return re.compile("".join("[^/]*" if c == "*" else re.escape(c) for c in pattern) + r"\Z")


class TeeRules:
    """Which requests are teed: method, path glob, and a sample of a stable key's hash."""

    def __init__(self, routes: Iterable[str], methods: Iterable[str], sample_rate: float) -> None:
        self._routes = [_glob_to_regex(r) for r in routes]
        self._methods = frozenset(m.upper() for m in methods)
        self.sample_rate = sample_rate
        # Deterministic sampling: the first 8 bytes of BLAKE2b(key) as an integer, compared with a
        # threshold, so the same key is picked on every proxy and on every replay.
        self._threshold = int(sample_rate * 2**64)
        self._route_cache: dict[str, bool] = {}

    def matches(self, method: str, path: str) -> bool:
        if method not in self._methods:
            return False
        hit = self._route_cache.get(path)
        if hit is None:
            hit = any(r.match(path) for r in self._routes)
            if len(self._route_cache) < _MAX_ROUTE_CACHE:
                self._route_cache[path] = hit
        return hit

    def sampled(self, key: str) -> bool:
        if self.sample_rate >= 1.0:
            return True
        if self.sample_rate <= 0.0:
            return False
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") < self._threshold


class Tee:
    """Bounded, app-owned candidate calls feeding the pairing buffer."""

    def __init__(
        self,
        *,
        client: CandidateClient,
        deadline_s: float,
        max_inflight: int,
        max_body_bytes: int,
        redact: Iterable[str],
        forward_auth: bool,
        pairing: PairingBuffer,
        stats: ProxyStats,
        pair_ttl_s: float,
    ) -> None:
        self._client = client
        self._deadline_s = deadline_s
        self._deadline_ms = deadline_s * 1000.0
        self._max_inflight = max_inflight
        self._max_body = max_body_bytes
        self._redact = frozenset(h.lower().encode() for h in redact)
        self._forward_auth = forward_auth
        self._pairing = pairing
        self._stats = stats
        self._pair_ttl_s = pair_ttl_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def inflight(self) -> int:
        """Candidate calls not finished: running tasks plus connections draining a late answer."""
        return len(self._tasks) + self._client.lingering

    def submit(
        self,
        request_id: str,
        method: str,
        target: bytes,
        route: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> bool:
        """Open a pair for this request and start the candidate call; never blocks.

        Returns ``True`` when a pair was opened, so the caller must report production's side.
        """
        stats = self._stats
        now = time.monotonic()
        opened_at = time.time()
        if len(body) > self._max_body:
            stats.skipped_body_too_large += 1
            stats.outcomes[Outcome.SKIPPED] += 1
            side = Side(Outcome.SKIPPED, body_bytes=len(body), error="request body too large")
            return self._open(request_id, opened_at, route, body, now, side)
        stats.teed += 1
        if self._closing or self.inflight >= self._max_inflight:
            stats.outcomes[Outcome.SHED] += 1
            return self._open(request_id, opened_at, route, body, now, Side(Outcome.SHED))
        if not self._open(request_id, opened_at, route, body, now, None):
            # No room to pair it, so the call would be wasted: count it as shed.
            stats.outcomes[Outcome.SHED] += 1
            return False
        client = self._client
        lines = candidate_lines(headers, redact=self._redact, forward_auth=self._forward_auth)
        data = encode_request(
            method, client.prefix + target, client.host_header, lines, body, always_length=True
        )
        task = asyncio.get_running_loop().create_task(self._call(request_id, method, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _open(
        self, rid: str, ts: float, route: str, body: bytes, now: float, side: Side | None
    ) -> bool:
        opened = self._pairing.open(
            rid, ts=ts, route=route, body=body, deadline=now + self._pair_ttl_s, candidate=side
        )
        if not opened:
            self._stats.dropped["buffer_full"] += 1
        return opened

    async def _call(self, request_id: str, method: str, data: bytes) -> None:
        start = time.perf_counter()
        side: Side
        try:
            async with asyncio.timeout(self._deadline_s):
                resp = await self._client.request_raw(data, method)
            elapsed = time.perf_counter() - start
            self._stats.candidate_latency.observe(elapsed)
            side = Side(
                Outcome.OK,
                status=resp.status,
                latency_ms=elapsed * 1000.0,
                model_version=resp.model_version,
                body=None if resp.truncated else resp.body,
                body_bytes=resp.size,
            )
        except BaseException as exc:  # every failure becomes data; fatal ones are re-raised
            # Leave the in-flight set now, in the same step in which a timed-out connection starts
            # lingering, so no one ever sees the call counted twice.
            self._leave()
            outcome, reason = classify(exc, self._deadline_ms)
            elapsed = time.perf_counter() - start
            if outcome is Outcome.TIMEOUT:
                latency = self._deadline_ms
            else:
                latency = elapsed * 1000.0
                self._stats.candidate_latency.observe(elapsed)
            side = Side(outcome, latency_ms=latency, error=reason)
            self._finish(request_id, side)
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            return
        self._leave()
        self._finish(request_id, side)

    def _leave(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.discard(task)

    def _finish(self, request_id: str, side: Side) -> None:
        self._stats.outcomes[side.outcome] += 1
        self._pairing.set_candidate(request_id, side)

    async def drain(self, grace_s: float) -> int:
        """Stop teeing, give in-flight calls ``grace_s``, cancel the rest; return how many were."""
        self._closing = True
        if not self._tasks:
            return 0
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in pending:
            task.cancel("shadowtee proxy shutting down")
        if pending:
            await asyncio.wait(pending)
        return len(pending)

    async def close(self) -> None:
        """Close the candidate connections, lingering ones included."""
        await self._client.close()
