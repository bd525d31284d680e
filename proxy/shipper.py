"""Ship finished pairs to the comparator in batches; spool them to disk while it is away.

The pairing buffer calls :meth:`Shipper.enqueue` (synchronous, bounded). One task,
:meth:`Shipper.run`, wakes when a batch is full or ``flush_interval`` has passed and:

1. replays spooled batches oldest first — the comparator sees pairs in about the order they were
   made;
2. sends the queued pairs as JSON documents to ``POST /v1/pairs`` (bearer token when configured),
   retrying connection errors, 408, 429 and 5xx with exponential backoff and full jitter, and
   moving on between replicas (:mod:`proxy.comparators`);
3. spools a batch that still failed, or any batch while older ones wait in the spool.

Batches are cut by size as well as by count: at most ``batch_size`` pairs and ``max_batch_bytes``,
lowered to what the comparator says it takes (its ``X-Max-Body-Bytes`` header, on every answer to
``POST /v1/pairs``) and halved on a 413, the batch then sent in halves. A pair that alone is too
large travels with its bodies reduced to their sizes, as bodies over ``max_pair_body_bytes``
already do: it is never dropped for its size.

Nothing stalls the line. A batch the comparator refuses for good (a 4xx other than 408/413/429) is
set aside: counted as dropped (``rejected``) and kept in the spool's ``rejected/`` folder for
inspection. A spooled batch that keeps failing while the batches behind it go through
(``poison_after`` times) is set aside the same way (``poison``); one that cannot be read
(``spool_unreadable``). A spool write that fails counts its pairs as dropped
(``spool_write_error``). The comparator keeps the pairs of a batch it cannot store one by one in
its quarantine, so a single bad pair never gets a batch refused.

Every pair ends in exactly one of delivered, spooled (then replayed) or a named drop counter, and
while it is on its way it is in exactly one of the pairing buffer, the queue, a batch being shipped
(:attr:`Shipper.shipping`) or the spool: nothing disappears silently (see
:meth:`proxy.metrics.ProxyStats.accounting`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence

import aiohttp
import msgspec

from proxy.comparators import Comparators
from proxy.metrics import ProxyStats
from proxy.pair_json import batch_size, encode_pair, join_batch, reduce_wire, split_batch
from proxy.pairing import CompletedPair
from proxy.spool import Spool, SpooledBatch

__all__ = ["MIN_BATCH_BYTES", "Shipper"]

log = logging.getLogger("shadowtee.proxy.shipper")

_ENCODE_SLICE = 16  # pairs encoded between two yields to the event loop
MIN_BATCH_BYTES = 16 * 1024  # a 413 never halves the limit below this


class Shipper:
    """Batches and the spool, around one comparator URL or a list of replicas to fail over
    between (:class:`~proxy.comparators.Comparators`; ``None``: count and drop)."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None,
        comparator_url: str | Sequence[str] | None,
        token: str | None,
        experiment: str,
        spool: Spool,
        stats: ProxyStats,
        batch_size: int,
        flush_interval_s: float,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        max_queue: int,
        max_body_bytes: int,
        max_batch_bytes: int = 8 * 1024 * 1024,
        poison_after: int = 5,
        max_queue_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.link = Comparators(
            session=session,
            urls=comparator_url,
            token=token,
            experiment=experiment,
            stats=stats,
            timeout_s=timeout_s,
            backoff_s=backoff_s,
            on_limit=self._lower_limit,
        )
        self._experiment = experiment
        self.spool = spool
        self._stats = stats
        stats.spool_inherited += spool.pairs  # spooled by an earlier process
        stats.spool_files_set_aside += spool.set_aside_files
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retries = retries
        self._max_queue = max_queue
        self._max_queue_bytes = max_queue_bytes
        # The bodies held by the pairs queued or in the batch being shipped (see _held): a batch
        # keeps its pairs until it is delivered, spooled or dropped.
        self.queued_bytes = 0
        self._max_body = max_body_bytes
        self.batch_limit = max_batch_bytes  # bytes; lowered by the comparator's header or a 413
        self._poison_after = poison_after
        self._strikes: dict[SpooledBatch, int] = {}
        self._queue: deque[CompletedPair] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        # One pass at a time: close()'s last pass waits for a pass of run() in progress, so no
        # spooled batch is sent (and counted) by two passes at once.
        self._pass = asyncio.Lock()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def shipping(self) -> int:
        """Pairs taken from the queue and not yet delivered, spooled or dropped."""
        return self._stats.pairs_shipping

    def enqueue(self, pair: CompletedPair) -> None:
        """Accept one finished pair; synchronous, never waits.

        The queue is bounded in pairs (``max_queue``), and the bodies of the pairs it holds and
        of the batch being shipped in bytes (``max_queue_bytes``): a comparator slower than the
        traffic, with large answers, must not make the sidecar's memory grow without end. Past
        either bound the pair is counted as dropped (``queue_full``)."""
        stats = self._stats
        stats.pairs_emitted += 1
        if not self.link.configured:
            stats.dropped["no_comparator"] += 1
            return
        held = _held(pair)
        if len(self._queue) >= self._max_queue or (
            held and self.queued_bytes + held > self._max_queue_bytes
        ):
            stats.dropped["queue_full"] += 1
            return
        self.queued_bytes += held
        self._queue.append(pair)
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    async def run(self) -> None:
        """Ship until :meth:`close` is called (then one last pass happens in ``close``)."""
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)
            self._wake.clear()
            if self._stopping:
                break
            try:
                await self.ship_pending(retries=self._retries)
            except Exception:  # keep shipping; the next pass retries what is left
                log.exception("shipping pass failed")

    async def close(self) -> None:
        """Last pass at shutdown: one attempt per batch, everything undelivered goes to the spool.
        Completes whatever the spool does (its faults are counted, not raised)."""
        self._stopping = True
        self.link.stopping = True  # the pass under way, if any, retries nothing more
        self._wake.set()
        try:
            await self.ship_pending(retries=0)
        except Exception:
            log.exception("last shipping pass failed")

    async def ship_pending(self, *, retries: int) -> None:
        """Replay the spool in order, then send (or spool) everything queued."""
        if not self.link.configured:
            return
        async with self._pass:
            await self._ship_pending(retries)

    async def _ship_pending(self, retries: int) -> None:
        replaying = await self._replay()
        while self._queue:
            pairs, items = await self._next_batch()
            if not items:
                continue
            try:
                if replaying:
                    self._to_spool(join_batch(items), len(items))
                else:
                    replaying = not await self._ship(pairs, items, retries)
            finally:  # delivered, spooled or dropped: its pairs are let go
                self.queued_bytes -= sum(map(_held, pairs))
        if not replaying:
            await self.link.report_drops()

    async def _next_batch(self) -> tuple[list[CompletedPair], list[bytes]]:
        """Take pairs off the queue and encode them, up to ``batch_size`` pairs and
        :attr:`batch_limit` bytes (a pair alone over the limit: its bodies reduced to sizes).

        Encoded a slice at a time, letting client requests run in between: a whole batch at once
        would hold the event loop for milliseconds and show up in the p99."""
        stats = self._stats
        pairs: list[CompletedPair] = []
        items: list[bytes] = []
        size = len(join_batch([]))
        while self._queue and len(items) < self._batch_size:
            pair = self._queue.popleft()
            stats.pairs_shipping += 1
            try:
                item = self._encode(pair, self._max_body)
                if size + len(item) + 1 > self.batch_limit:
                    if items:  # the next batch starts with it
                        self._queue.appendleft(pair)
                        stats.pairs_shipping -= 1
                        break
                    item = self._encode(pair, 0)
            except Exception:  # a bug must not take the batch with it
                log.exception("a pair could not be encoded; dropped")
                self.queued_bytes -= _held(pair)
                stats.pairs_shipping -= 1
                stats.dropped["encode_error"] += 1
                continue
            pairs.append(pair)
            items.append(item)
            size += len(item) + 1
            if len(items) % _ENCODE_SLICE == 0:
                await asyncio.sleep(0)
        return pairs, items

    def _encode(self, pair: CompletedPair, max_body_bytes: int) -> bytes:
        return encode_pair(pair, experiment=self._experiment, max_body_bytes=max_body_bytes)

    async def _ship(self, pairs: list[CompletedPair], items: list[bytes], retries: int) -> bool:
        """Send one batch; ``False`` when the comparator is away (the batch is then spooled)."""
        stats = self._stats
        n = len(items)
        result = await self.link.post(items, retries=retries)
        if result == "too_large":
            self._lower_limit(batch_size(items) // 2)
            if n > 1:
                half = n // 2
                if not await self._ship(pairs[:half], items[:half], retries):
                    self._to_spool(join_batch(items[half:]), n - half)
                    return False
                return await self._ship(pairs[half:], items[half:], retries)
            reduced = self._encode(pairs[0], 0)
            if reduced != items[0]:
                return await self._ship(pairs, [reduced], retries)
            result = "rejected"
        if result == "ok":
            stats.pairs_shipping -= n
            stats.pairs_delivered += n
            return True
        if result == "rejected":
            stats.pairs_shipping -= n
            stats.dropped["rejected"] += n
            self.spool.keep_rejected(join_batch(items), n)
            return True
        self._to_spool(join_batch(items), n)
        return False

    def _lower_limit(self, limit: int) -> None:
        self.batch_limit = max(MIN_BATCH_BYTES, min(self.batch_limit, limit))

    async def _replay(self) -> bool:
        """Send spooled batches oldest first; return ``True`` if some are still spooled."""
        spool, stats = self.spool, self._stats
        while (head := spool.oldest()) is not None:
            batch, payload = head
            if payload is None:
                self._set_aside(batch, "spool_unreadable")
                continue
            result = await self.link.post(payload, retries=0)
            if result == "unreachable":
                return True
            if result == "failed":  # an answer: maybe this batch's fault, not the comparator's
                # At shutdown no batch behind it is tried: the drain makes one attempt.
                if self._stopping or not await self._try_behind(batch, payload):
                    return True
                continue
            if result == "too_large":
                self._lower_limit(len(payload) // 2)
                if self._respool_smaller(batch, payload):
                    continue
                result = "rejected"
            if result == "ok":
                self._strikes.pop(batch, None)
                spool.remove(batch)
                stats.pairs_replayed += batch.pairs
            else:
                self._set_aside(batch, "rejected")
        return False

    async def _try_behind(self, head: SpooledBatch, head_payload: bytes) -> bool:
        """The head failed with an answer: try the batch behind it once and, if that one goes
        through, the head once more. If the head fails again right after the other succeeded it
        takes a strike, and after ``poison_after`` strikes it is set aside (``poison``): a batch
        that fails while others succeed is the batch's fault, not the comparator's (a comparator
        failing at random sets a batch aside with a probability of about 6^-poison_after at
        even odds). ``True`` when the replay may go on."""
        batches = self.spool.batches
        if len(batches) < 2:
            return False
        nxt = batches[1]
        payload = self.spool.read(nxt)
        if payload is None:
            self._set_aside(nxt, "spool_unreadable")
            return True
        if await self.link.post(payload, retries=0) != "ok":
            return False
        self.spool.remove(nxt)
        self._stats.pairs_replayed += nxt.pairs
        if await self.link.post(head_payload, retries=0) == "ok":
            self._strikes.pop(head, None)
            self.spool.remove(head)
            self._stats.pairs_replayed += head.pairs
            return True
        strikes = self._strikes[head] = self._strikes.get(head, 0) + 1
        if strikes >= self._poison_after:
            log.error("spooled batch %s keeps failing while others go through", head.path.name)
            self._set_aside(head, "poison")
        return True

    def _respool_smaller(self, batch: SpooledBatch, payload: bytes) -> bool:
        """Write a spooled batch the comparator found too large back as two halves (one pair:
        with its bodies reduced to their sizes), at the end of the spool; ``False`` when that
        cannot help. A half the spool cannot take is counted as dropped with the reason."""
        try:
            items = split_batch(payload)
            if len(items) > 1:
                half = len(items) // 2
                parts = [items[:half], items[half:]]
            else:
                reduced = reduce_wire(items[0]) if items else None
                if reduced is None:
                    return False
                parts = [[reduced]]
        except (msgspec.DecodeError, KeyError):
            return False
        self._strikes.pop(batch, None)
        self.spool.remove(batch)  # its pairs are spooled again just below, or counted dropped
        for part in parts:
            result = self.spool.append(join_batch(part), len(part))
            if result != "ok":
                reason = "spool_full" if result == "full" else "spool_write_error"
                self._stats.dropped[reason] += len(part)
        return True

    def _set_aside(self, batch: SpooledBatch, reason: str) -> None:
        self._strikes.pop(batch, None)
        self.spool.set_aside(batch)
        self._stats.dropped[reason] += batch.pairs
        self._stats.spool_batches_set_aside += 1

    def _to_spool(self, payload: bytes, pairs: int) -> None:
        stats = self._stats
        stats.pairs_shipping -= pairs
        result = self.spool.append(payload, pairs)
        if result == "ok":
            stats.pairs_spooled += pairs
        elif result == "full":
            stats.dropped["spool_full"] += pairs
            log.warning("spool full (%d bytes): dropped %d pairs", self.spool.bytes, pairs)
        else:
            stats.dropped["spool_write_error"] += pairs


def _held(pair: CompletedPair) -> int:
    """The bytes of a queued pair's bodies (its other fields are small and bounded)."""
    n = len(pair.request_body) if pair.request_body is not None else 0
    if pair.prod.body is not None:
        n += len(pair.prod.body)
    if pair.candidate.body is not None:
        n += len(pair.candidate.body)
    return n
