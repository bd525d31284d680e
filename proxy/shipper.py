"""Ship finished pairs to the comparator in batches; spool them to disk while it is away.

The pairing buffer calls :meth:`Shipper.enqueue` (synchronous, bounded). One task,
:meth:`Shipper.run`, wakes when a batch is full or ``flush_interval`` has passed and:

1. replays spooled batches oldest first — the comparator sees pairs in the order they were made;
2. sends the queued pairs as one JSON document to ``POST /v1/pairs`` (bearer token when configured), retrying
   connection errors, 429 and 5xx with exponential backoff and full jitter;
3. spools a batch that still failed, or any batch while older ones wait in the spool.

A batch the comparator rejects as malformed (400/413/422) would fail forever, so it is dropped and
counted under ``rejected``. Every pair ends in exactly one of delivered, spooled (then replayed)
or a named drop counter — nothing disappears silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections import deque

import aiohttp

from proxy.encode import encode_pair, join_batch
from proxy.metrics import ProxyStats
from proxy.pairing import CompletedPair
from proxy.spool import Spool

__all__ = ["Shipper"]

log = logging.getLogger("shadowtee.proxy.shipper")

_REJECTED = frozenset({400, 413, 422})
_ENCODE_SLICE = 16  # pairs encoded between two yields to the event loop


class Shipper:
    """Batches, retries and the spool, around one comparator URL (``None``: count and drop)."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None,
        comparator_url: str | None,
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
    ) -> None:
        self._session = session
        self._url = comparator_url.rstrip("/") + "/v1/pairs" if comparator_url else None
        # Drop counts reach the report through the comparator too, cumulative per proxy process.
        self._drops_url = (
            f"{comparator_url.rstrip('/')}/v1/experiments/{experiment}/drops"
            if comparator_url
            else None
        )
        self._proxy_id = os.urandom(8).hex()
        self._drops_reported: dict[str, int] = {}
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._experiment = experiment
        self.spool = spool
        self._stats = stats
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retries = retries
        self._backoff_s = backoff_s
        self._max_queue = max_queue
        self._max_body = max_body_bytes
        self._queue: deque[CompletedPair] = deque()
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    def enqueue(self, pair: CompletedPair) -> None:
        """Accept one finished pair; synchronous, never waits."""
        stats = self._stats
        stats.pairs_emitted += 1
        if self._url is None:
            stats.dropped["no_comparator"] += 1
            return
        if len(self._queue) >= self._max_queue:
            stats.dropped["queue_full"] += 1
            return
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
        """Last pass at shutdown: one attempt per batch, everything undelivered goes to the spool."""
        self._stopping = True
        self._wake.set()
        await self.ship_pending(retries=0)

    async def ship_pending(self, *, retries: int) -> None:
        """Replay the spool in order, then send (or spool) everything queued."""
        if self._url is None:
            return
        replaying = await self._replay()
        while self._queue:
            n = min(self._batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            payload = await self._encode(batch)
            if not replaying:
                result = await self._post(payload, retries=retries)
                if result == "ok":
                    self._stats.pairs_delivered += n
                    continue
                if result == "rejected":
                    self._stats.dropped["rejected"] += n
                    continue
                replaying = True  # comparator is away: keep order by spooling the rest too
            self._to_spool(payload, n)
        if not replaying:
            await self._report_drops()

    async def _encode(self, batch: list[CompletedPair]) -> bytes:
        """Encode a batch a slice at a time, letting client requests run in between: a whole
        batch at once would hold the event loop for milliseconds and show up in the p99."""
        items: list[bytes] = []
        for start in range(0, len(batch), _ENCODE_SLICE):
            items.extend(
                encode_pair(p, experiment=self._experiment, max_body_bytes=self._max_body)
                for p in batch[start : start + _ENCODE_SLICE]
            )
            await asyncio.sleep(0)
        return join_batch(items)

    async def _report_drops(self) -> None:
        """Send the cumulative drop counts when they changed; best effort, retried next pass."""
        current = {reason: int(n) for reason, n in self._stats.dropped.items() if n}
        if not current or current == self._drops_reported or self._drops_url is None:
            return
        assert self._session is not None
        body = json.dumps({"proxy_id": self._proxy_id, "dropped": current}).encode()
        try:
            async with self._session.post(
                self._drops_url, data=body, headers=self._headers, timeout=self._timeout
            ) as resp:
                if 200 <= resp.status < 300:
                    self._drops_reported = current
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("drop report not delivered: %s", exc or type(exc).__name__)

    async def _replay(self) -> bool:
        """Send spooled batches oldest first; return ``True`` if some are still spooled."""
        while (head := self.spool.oldest()) is not None:
            batch, payload = head
            result = await self._post(payload, retries=0)
            if result == "failed":
                return True
            self.spool.remove(batch)
            if result == "ok":
                self._stats.pairs_replayed += batch.pairs
            else:
                self._stats.dropped["rejected"] += batch.pairs
        return False

    def _to_spool(self, payload: bytes, pairs: int) -> None:
        if self.spool.append(payload, pairs):
            self._stats.pairs_spooled += pairs
        else:
            self._stats.dropped["spool_full"] += pairs
            log.warning("spool full (%d bytes): dropped %d pairs", self.spool.bytes, pairs)

    async def _post(self, payload: bytes, *, retries: int) -> str:
        """``"ok"``, ``"rejected"`` (malformed, do not retry) or ``"failed"`` (retry later)."""
        assert self._session is not None and self._url is not None
        for attempt in range(retries + 1):
            if attempt:
                # Full jitter keeps many proxies from retrying in lockstep after an outage.
                await asyncio.sleep(random.uniform(0, self._backoff_s * 2 ** (attempt - 1)))
            try:
                async with self._session.post(
                    self._url, data=payload, headers=self._headers, timeout=self._timeout
                ) as resp:
                    text = await resp.text(errors="replace")
                    if 200 <= resp.status < 300:
                        return "ok"
                    if resp.status in _REJECTED:
                        log.error("comparator rejected a batch (%d): %s", resp.status, text[:300])
                        return "rejected"
                    self._stats.ship_failures += 1
                    log.warning("comparator answered %d: %s", resp.status, text[:200])
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._stats.ship_failures += 1
                log.warning("comparator unreachable: %s", exc or type(exc).__name__)
        return "failed"
