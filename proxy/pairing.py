"""The pairing buffer: join production's and the candidate's results by request id.

Synchronous and bounded on purpose. Nothing here awaits, nothing reads a clock: every call that
needs the time takes ``now`` (``time.monotonic()`` seconds) from its caller, so the tests drive it
with plain numbers and no event loop. The two sides arrive in any order — from the request handler
(production) and from a tee task (candidate) — and the pair is emitted to ``on_emit`` as soon as
both are in, or by :meth:`PairingBuffer.expire` once its deadline passes, the missing side filled
in as a timeout (a right-censored latency, not a missing one).

Bodies stay ``bytes`` here; turning them into JSON is the shipper's job, off the request path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from contract import SEGMENT_VALUE_MAX
from contract.outcomes import Outcome

__all__ = ["CompletedPair", "PairingBuffer", "Side"]


class Side(msgspec.Struct, gc=False):
    """One side's result as the proxy saw it; ``body`` is the raw response bytes (or ``None``).

    A msgspec struct rather than a dataclass: built in C (a third of the time, on every teed
    request) and never tracked by the garbage collector, which it cannot need — it holds only
    numbers, text and bytes. The same holds for :class:`CompletedPair`."""

    outcome: Outcome
    status: int | None = None
    latency_ms: float | None = None
    model_version: str | None = None
    body: bytes | None = None
    body_bytes: int | None = None
    error: str | None = None


class CompletedPair(msgspec.Struct, gc=False):
    """Everything the shipper needs to write one wire pair (DESIGN §5)."""

    request_id: str
    ts: float  # wall-clock seconds since the epoch, when the request arrived
    route: str
    request_sha256: str
    request_body: bytes | None
    prod: Side
    candidate: Side
    # segment values (DESIGN §5), from PairingBuffer.segments; None: no dimension configured
    segments: dict[str, str] | None = None


class _Pending(msgspec.Struct):  # tracked by the collector: ``sha256`` is any callable
    ts: float
    route: str
    body: bytes
    deadline: float
    opened: float | None = None  # time.monotonic() when the pair opened, to censor a missing prod
    prod: Side | None = None
    seen: dict[str, str] | None = None  # segment values read at open (request headers)
    sha256: Callable[[], str] | None = None  # the body's digest when the body is not held
    candidate: Side | None = None
    held: int = 0  # bytes the candidate's body, waiting for production, counts for on_release


@dataclass
class PairingBuffer:
    """A bounded map ``request_id -> half-finished pair``.

    ``keep_request_body`` decides whether the emitted pair carries the request bytes (the
    ``include_request_body`` setting); the SHA-256 is always computed. ``dropped_full`` counts
    pairs refused because ``max_pairs`` were already waiting.
    """

    max_pairs: int
    on_emit: Callable[[CompletedPair], None]
    candidate_deadline_ms: float
    keep_request_body: bool = False
    # (route, request body) -> segment values of the pair (proxy.pair_json.segment_extractor)
    segments: Callable[[str, bytes], dict[str, str] | None] | None = None
    # add prod_version and cand_version (each side's X-Model-Version) to the segment values
    segment_versions: bool = False
    # Told (request id, bytes) when production's body is about to wait in a pair for the
    # candidate's side (the tee counts it against its byte budget, or gives the call up).
    on_wait: Callable[[str, int], None] | None = None
    # Given back, when a pair leaves, the bytes its set_candidate(held=...) said it holds.
    on_release: Callable[[int], None] | None = None
    dropped_full: int = 0
    expired: int = 0
    _pending: dict[str, _Pending] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._pending

    def open(
        self,
        request_id: str,
        *,
        ts: float,
        route: str,
        body: bytes,
        deadline: float,
        candidate: Side | None = None,
        now: float | None = None,
        seen: dict[str, str] | None = None,
        sha256: Callable[[], str] | None = None,
    ) -> bool:
        """Start a pair. Returns ``False`` (and counts it) when the buffer is full.

        ``now`` (the caller's ``time.monotonic()``) lets a production side still missing when the pair
        is emitted carry the time waited as its right-censored latency. ``seen``: segment values
        the caller read from the request (its headers), joined to the pair's other ones.
        ``sha256``: the request body's digest, read when the pair is emitted, for a body that
        is forwarded as it arrives instead of held (``body`` is then empty).
        """
        if len(self._pending) >= self.max_pairs:
            self.dropped_full += 1
            return False
        self._pending[request_id] = _Pending(
            ts, route, body, deadline, now, candidate=candidate, seen=seen, sha256=sha256
        )
        return True

    def set_prod(self, request_id: str, side: Side) -> None:
        entry = self._pending.get(request_id)
        if entry is None:  # expired or never opened: the late half has nowhere to go
            return
        if entry.candidate is None and side.body and self.on_wait is not None:
            self.on_wait(request_id, len(side.body))  # may set the candidate's side
        entry.prod = side
        if entry.candidate is not None:
            self._emit(request_id, entry)

    def set_candidate(self, request_id: str, side: Side, held: int = 0) -> None:
        """The candidate's side; ``held``: bytes the caller counts for it while it waits for
        production's, given back to ``on_release`` when the pair leaves the buffer."""
        entry = self._pending.get(request_id)
        if entry is None:
            if held and self.on_release is not None:
                self.on_release(held)
            return
        entry.candidate = side
        entry.held = held
        if entry.prod is not None:
            self._emit(request_id, entry)

    def waits_for_prod(self, request_id: str) -> bool:
        """Whether the pair is open and production's side is not in yet."""
        entry = self._pending.get(request_id)
        return entry is not None and entry.prod is None

    def expire(self, now: float) -> int:
        """Emit every pair whose deadline is at or before ``now``; return how many."""
        # Every pair gets the same deadline offset, so insertion order is deadline order and the
        # scan can stop at the first pair still in time.
        due: list[str] = []
        for rid, entry in self._pending.items():
            if entry.deadline > now:
                break
            due.append(rid)
        for rid in due:
            self._emit(rid, self._pending[rid], now)
        self.expired += len(due)
        return len(due)

    def drain(self, now: float | None = None) -> int:
        """Emit every pending pair now, however incomplete (used at shutdown)."""
        rids = list(self._pending)
        for rid in rids:
            self._emit(rid, self._pending[rid], now)
        return len(rids)

    def _segment_values(
        self, entry: _Pending, prod: Side, candidate: Side
    ) -> dict[str, str] | None:
        out = self.segments(entry.route, entry.body) if self.segments else None
        if entry.seen:
            out = {**out, **entry.seen} if out else dict(entry.seen)
        if self.segment_versions:
            out = out or {}
            for dim, side in (("prod_version", prod), ("cand_version", candidate)):
                if side.model_version:
                    out[dim] = side.model_version[:SEGMENT_VALUE_MAX]
        return out or None

    def _emit(self, request_id: str, entry: _Pending, now: float | None = None) -> None:
        del self._pending[request_id]
        if entry.held and self.on_release is not None:
            self.on_release(entry.held)
        prod = entry.prod
        if prod is None:
            # Production had not answered after this long: a right-censored latency (DESIGN §5).
            waited = None
            if now is not None and entry.opened is not None:
                waited = round(max(0.0, now - entry.opened) * 1000.0, 3)
            prod = Side(
                Outcome.TIMEOUT,
                latency_ms=waited,
                error="no production result by the pair deadline",
            )
        candidate = entry.candidate or Side(
            Outcome.TIMEOUT,
            latency_ms=self.candidate_deadline_ms,
            error=f"deadline {self.candidate_deadline_ms:g} ms",
        )
        self.on_emit(
            CompletedPair(
                request_id=request_id,
                ts=entry.ts,
                route=entry.route,
                request_sha256=(
                    entry.sha256() if entry.sha256 else hashlib.sha256(entry.body).hexdigest()
                ),
                request_body=entry.body if self.keep_request_body else None,
                prod=prod,
                candidate=candidate,
                segments=self._segment_values(entry, prod, candidate),
            )
        )
