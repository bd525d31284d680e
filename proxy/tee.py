"""The tee: decide which requests go to the candidate, and send them without anyone waiting.

:class:`~proxy.tee_rules.TeeRules` decides which requests are teed. :class:`Tee` owns a
bounded set of candidate calls that belong to the application — not to the request handler, whose
task dies when the client disconnects — and :meth:`Tee.submit` is synchronous: it opens the pair,
schedules the candidate call and returns at once. Past ``max_inflight`` calls the tee is shed and
counted; a body over ``max_tee_body_bytes`` is forwarded to production but never to the candidate,
and counted.
Each candidate call runs under one hard deadline covering connect, send and the whole response.

The tee can be paused (by an operator or by the breaker, see :mod:`proxy.control`): a paused
request does not enter the tee — no candidate call, no pair — and is counted in
``tee_paused[source]``, beside ``not_sampled``. While the breaker holds it paused, a probe
budget lets single calls through; their results go to :attr:`Tee.on_probe`. The pause check is
one attribute read on the request path; the breaker's counters are two integers per call.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from contract.outcomes import Outcome, classify
from proxy.headers import candidate_lines, segment_header_values
from proxy.metrics import ProxyStats
from proxy.pairing import PairingBuffer, Side
from proxy.upstream import CandidateCall, CandidateClient, CandidateResponse, encode_request

__all__ = ["Tee"]

# Why a pair's candidate side is shed (its error): what the live calls hold would pass
# max_tee_bytes; max_inflight calls were in flight; the proxy was shutting down.
_OVER_BYTES = "shed: the tee's byte budget (max_tee_bytes) was full"
_OVER_INFLIGHT = "shed: max_inflight candidate calls in flight"
_CLOSING = "shed: the proxy is shutting down"


class _Shadow(CandidateCall):
    """One teed request's candidate call, as the tee tracks it until it reports or times out."""

    __slots__ = ("_tee", "answer", "deadline", "probe", "request_id", "size", "started")

    def __init__(
        self, tee: Tee, client: CandidateClient, request_id: str, data: bytes, method: str
    ) -> None:
        super().__init__(client, data, method)
        self._tee = tee
        self.request_id = request_id
        self.started = 0.0
        self.deadline = 0.0
        self.probe = False
        # Bytes counted against the tee's budget for this call until it finishes: its request
        # body (held by the call and its pair), production's answer while the pair waits for
        # this call, and ``answer``, what it holds of the candidate's answer so far.
        self.size = 0
        self.answer = 0

    @property
    def client(self) -> CandidateClient:
        return self._client

    def _hold(self, size: int) -> bool:
        if not self._tee.take(size):
            return False
        self.size += size
        self.answer += size
        return True

    def _dropped(self) -> None:
        self._tee.held_bytes -= self.answer
        self.size -= self.answer
        self.answer = 0

    def finished(self, resp: CandidateResponse | None, exc: Exception | None) -> None:
        self._tee._finished(self, resp, exc)


class Tee:
    """Bounded, app-owned candidate calls feeding the pairing buffer.

    A call is an object the tee holds, not a task: the request handler only opens the pair and
    schedules the call's start, so a client that disconnects cancels nothing here. Every call
    gets the same deadline offset, so calls in start order are also in deadline order: one timer,
    armed for the oldest live call, times out every call past its deadline, rather than one timer
    (or one ``asyncio.timeout``) per call.
    """

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
        segment_headers: Mapping[str, str] | None = None,
        max_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        segment_headers = segment_headers or {}
        self._client = client
        self._deadline_s = deadline_s
        self._deadline_ms = deadline_s * 1000.0
        self._timeout_reason = classify(TimeoutError(), self._deadline_ms)[1]
        self._max_inflight = max_inflight
        self._max_body = max_body_bytes
        self.max_bytes = max_bytes
        # What the live calls hold (see _Shadow.size): past max_bytes a tee is shed.
        self.held_bytes = 0
        self._redact = frozenset(h.lower().encode() for h in redact)
        # header name (lower case) -> segment dimension (README, "Segments")
        self._segment_headers = {
            header.lower().encode("latin-1"): dim for dim, header in segment_headers.items()
        }
        self._forward_auth = forward_auth
        self._pairing = pairing
        self._stats = stats
        self._pair_ttl_s = pair_ttl_s
        self._live: dict[str, _Shadow] = {}  # by the pair's request id
        # Calls in start order (so in deadline order); finished ones leave when they reach the
        # front. ``_timer`` is armed for the front's deadline whenever the queue is not empty.
        self._by_deadline: deque[_Shadow] = deque()
        self._to_start: list[_Shadow] = []
        self._timer: asyncio.TimerHandle | None = None
        # The running loop, read at the first submit: asyncio.get_running_loop() costs a getpid()
        # system call on every call (CPython 3.11), and submit is on every teed request's path.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Future[None] | None = None
        self._closing = False
        # Live control (proxy.control): ``paused`` is read once per teed request; while it is
        # set, ``probes`` calls may still go out, and their results go to ``on_probe``.
        self.paused = False
        self.pause_source = "operator"
        self.probes = 0
        self.on_probe: Callable[[bool], None] | None = None
        # What the breaker reads: calls answered below 500, and calls that failed, timed out or
        # answered 5xx (shed and skipped tees are not calls).
        self.succeeded = 0
        self.failed = 0
        self._retired: list[CandidateClient] = []
        pairing.on_wait = self.hold_prod
        pairing.on_release = self._release

    @property
    def inflight(self) -> int:
        """Candidate calls not finished: live calls plus connections draining a late answer."""
        n = len(self._live) + self._client.lingering
        for old in self._retired:
            n += old.lingering
        return n

    @property
    def client(self) -> CandidateClient:
        return self._client

    def switch_client(self, client: CandidateClient) -> None:
        """Send new calls to ``client``; calls under way finish on the old one, which drains."""
        self._retired.append(self._client)
        self._client = client

    async def close_retired(self) -> int:
        """Close the retired clients no call uses any more; return how many remain."""
        if not self._retired:
            return 0
        busy = {id(call.client) for call in self._live.values()}
        keep: list[CandidateClient] = []
        for old in self._retired:
            if id(old) in busy or old.lingering:
                keep.append(old)
            else:
                await old.close()
        self._retired = keep
        return len(keep)

    @property
    def turning_away(self) -> bool:
        """Paused with no probe to send: :meth:`submit` only counts the request, so its body
        need not be read whole (a large one is forwarded to production as it arrives)."""
        return self.paused and (self.probes <= 0 or self._closing)

    @property
    def max_body_bytes(self) -> int:
        """Request bodies larger than this are not teed (their pair records them as skipped)."""
        return self._max_body

    def skip_unread(
        self,
        request_id: str,
        route: str,
        length: int,
        headers: list[tuple[bytes, bytes]],
        sha256: Callable[[], str],
    ) -> bool:
        """:meth:`submit` for a body over :attr:`max_body_bytes` that is still arriving: the
        pair records it as skipped (``body_bytes`` = ``length``) without the body being held;
        ``sha256`` gives its digest when the pair is emitted (the body hashed as it is
        forwarded). Counted exactly as :meth:`submit` counts a body too large to tee."""
        if self._admit() is None:
            return False
        return self._skip(request_id, route, b"", length, headers, sha256)

    def _admit(self) -> bool | None:
        """``None`` when the paused tee turns this request away (counted), else whether it is
        one of the paused tee's probes (counted off the probes left)."""
        if not self.paused:
            return False
        if self.probes <= 0 or self._closing:
            self._stats.tee_paused[self.pause_source] += 1
            return None
        self.probes -= 1
        return True

    def _skip(
        self,
        request_id: str,
        route: str,
        body: bytes,
        length: int,
        headers: list[tuple[bytes, bytes]],
        sha256: Callable[[], str] | None = None,
    ) -> bool:
        """Open the pair of a request whose body is too large to tee: its candidate side is
        SKIPPED, counted in ``skipped_body_too_large``."""
        self._stats.skipped_body_too_large += 1
        self._stats.outcomes[Outcome.SKIPPED] += 1
        side = Side(Outcome.SKIPPED, body_bytes=length, error="request body too large")
        return self._open(
            request_id, time.time(), route, body, time.monotonic(), side, headers, sha256
        )

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
        The call itself starts on the event loop's next turn, after the handler has sent the
        request to production: production's answer never waits behind the candidate's write.
        """
        probe = self._admit() if self.paused else False
        if probe is None:
            return False
        if len(body) > self._max_body:
            return self._skip(request_id, route, body, len(body), headers)
        stats = self._stats
        now = time.monotonic()
        opened_at = time.time()
        stats.teed += 1
        size = 2 * len(body)  # held twice: by the call (in its request's bytes) and its pair
        shed = None
        if self._closing:
            shed = _CLOSING
        elif self.inflight >= self._max_inflight:
            shed = _OVER_INFLIGHT
        elif size and self.held_bytes + size > self.max_bytes:
            self._over_bytes()
            shed = _OVER_BYTES
        if shed is not None:
            stats.outcomes[Outcome.SHED] += 1
            side = Side(Outcome.SHED, error=shed)
            return self._open(request_id, opened_at, route, body, now, side, headers)
        if not self._open(request_id, opened_at, route, body, now, None, headers):
            # No room to pair it, so the call would be wasted: count it as shed.
            stats.outcomes[Outcome.SHED] += 1
            return False
        client = self._client
        lines = candidate_lines(headers, redact=self._redact, forward_auth=self._forward_auth)
        data = encode_request(
            method, client.prefix + target, client.host_header, lines, body, always_length=True
        )
        call = _Shadow(self, client, request_id, data, method)
        call.probe = probe
        call.size = size
        self.held_bytes += size
        self._live[request_id] = call
        self._to_start.append(call)
        if len(self._to_start) == 1:  # one callback starts every call submitted in this turn
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._start)
        return True

    def _open(
        self,
        rid: str,
        ts: float,
        route: str,
        body: bytes,
        now: float,
        side: Side | None,
        headers: list[tuple[bytes, bytes]],
        sha256: Callable[[], str] | None = None,
    ) -> bool:
        seen = None
        if self._segment_headers:
            seen = segment_header_values(headers, self._segment_headers)
        opened = self._pairing.open(
            rid,
            ts=ts,
            route=route,
            body=body,
            deadline=now + self._pair_ttl_s,
            candidate=side,
            now=now,
            seen=seen,
            sha256=sha256,
        )
        if not opened:
            self._stats.dropped["buffer_full"] += 1
        return opened

    def _start(self) -> None:
        calls, self._to_start = self._to_start, []
        loop = self._loop or asyncio.get_running_loop()
        live, queue = self._live, self._by_deadline
        deadline = loop.time() + self._deadline_s
        for call in calls:
            if live.get(call.request_id) is not call:  # given up before it started
                continue
            call.started = time.perf_counter()
            call.deadline = deadline
            queue.append(call)
            if self._timer is None:
                self._timer = loop.call_at(deadline, self._expire)
            try:
                call.start()
            except Exception as exc:  # the calls after this one must still start
                if live.get(call.request_id) is call:
                    call.abandon()
                    self._finished(call, None, exc)

    def _finished(
        self, call: _Shadow, resp: CandidateResponse | None, exc: Exception | None
    ) -> None:
        """The call reported: its answer, or the failure that ended it (never its deadline)."""
        self._live.pop(call.request_id, None)
        elapsed = time.perf_counter() - call.started
        if resp is not None and resp.over_budget and resp.status < 500:
            # An answer not held cannot be compared: shed, never an empty (invalid) output. A
            # 5xx is judged by its status alone, so it stays the failure it is.
            self._over_bytes()
            side = Side(Outcome.SHED, error=_OVER_BYTES)
        elif resp is not None:
            self._stats.candidate_latency.observe(elapsed)
            side = Side(
                Outcome.OK,
                status=resp.status,
                latency_ms=elapsed * 1000.0,
                model_version=resp.model_version,
                body=None if resp.truncated else resp.body,
                body_bytes=resp.size,
            )
        else:
            outcome, reason = classify(exc or ConnectionError(), self._deadline_ms)
            if outcome is Outcome.TIMEOUT:  # a timeout of the system's, not of the tee's deadline
                side = Side(outcome, latency_ms=self._deadline_ms, error=reason)
            else:
                self._stats.candidate_latency.observe(elapsed)
                side = Side(outcome, latency_ms=elapsed * 1000.0, error=reason)
        self._finish(call, side)

    def _expire(self) -> None:
        """Time out every live call past its deadline; re-arm for the next one."""
        self._timer = None
        queue = self._by_deadline
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        while queue:
            call = queue[0]
            if self._live.get(call.request_id) is call:
                if call.deadline > now:
                    self._timer = loop.call_at(call.deadline, self._expire)
                    return
                self._give_up(call, self._timeout_reason)
            queue.popleft()

    def _give_up(self, call: _Shadow, reason: str) -> asyncio.Task[object] | None:
        return self._end(call, Side(Outcome.TIMEOUT, latency_ms=self._deadline_ms, error=reason))

    def _end(self, call: _Shadow, side: Side) -> asyncio.Task[object] | None:
        """End a live call now with ``side``, leaving its connection to drain (or close)."""
        # Leave the live set in the same step in which the connection starts lingering, so no
        # one ever sees the call counted twice (a lingering connection counts as in flight).
        self._live.pop(call.request_id, None)
        connecting = call.abandon()
        self._finish(call, side)
        return connecting

    def _over_bytes(self) -> None:
        """Count a tee shed because the byte budget was full."""
        self._stats.tee_shed_byte_budget += 1

    def hold_prod(self, request_id: str, size: int) -> None:
        """Production's answer (``size`` bytes of body) waits in the pair for this call: count
        it against the byte budget until the call finishes or, past the budget, give the call
        up now as shed, so that the pair is shipped at once rather than held."""
        call = self._live.get(request_id)
        if call is None:
            return
        if call.over_budget or not self.take(size):
            self._over_bytes()
            self._end(call, Side(Outcome.SHED, error=_OVER_BYTES))
        else:
            call.size += size

    def take(self, size: int) -> bool:
        """Count ``size`` more bytes as held, if they fit under ``max_bytes``."""
        if self.held_bytes + size > self.max_bytes:
            return False
        self.held_bytes += size
        return True

    def _release(self, size: int) -> None:
        self.held_bytes -= size

    def _finish(self, call: _Shadow, side: Side) -> None:
        self.held_bytes -= call.size
        call.size = call.answer = 0
        held = 0
        body = side.body
        if body and self._pairing.waits_for_prod(call.request_id):
            # The answer waits in its pair for production's: still counted until the pair leaves.
            held = len(body)
            if not self.take(held):
                self._over_bytes()
                side, held = Side(Outcome.SHED, error=_OVER_BYTES), 0
        outcome = side.outcome
        self._stats.outcomes[outcome] += 1
        if outcome is not Outcome.SHED:  # shed for the budget: no answer to judge the call by
            ok = outcome is Outcome.OK and (side.status or 0) < 500
            if ok:
                self.succeeded += 1
            else:
                self.failed += 1
            if call.probe and self.on_probe is not None:
                self.on_probe(ok)
        self._pairing.set_candidate(call.request_id, side, held)
        if not self._live and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def drain(self, grace_s: float) -> int:
        """Stop teeing, give in-flight calls ``grace_s``, cancel the rest; return how many were."""
        self._closing = True
        if not self._live:
            return 0
        idle = self._idle = asyncio.get_running_loop().create_future()
        await asyncio.wait([idle], timeout=grace_s)
        idle.cancel()
        self._idle = None
        pending = list(self._live.values())
        reason = classify(asyncio.CancelledError(), self._deadline_ms)[1]
        connecting = [task for call in pending if (task := self._give_up(call, reason))]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._by_deadline.clear()
        if connecting:  # let cancelled connection attempts unwind before the pools close
            await asyncio.wait(connecting)
        return len(pending)

    async def close(self) -> None:
        """Close the candidate connections, lingering ones included (retired clients too)."""
        for old in self._retired:
            await old.close()
        self._retired = []
        await self._client.close()
