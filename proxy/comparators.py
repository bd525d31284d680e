"""The comparator replicas a sidecar ships to: one POST with retries, failover, the body limit.

Every POST goes to the current replica; one that is unreachable, times out or answers 408/429/5xx,
or 401/403/404/405 (wrong for this sidecar: the batch is kept), makes the shipper move on to the
next for the next try. Ingest is idempotent on the pair id, so a batch that a dying replica stored
before it could answer is stored once when the next replica receives it again.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from typing import Literal

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from proxy.metrics import ProxyStats
from proxy.pair_json import batch_size, batch_slices, join_batch

__all__ = ["BatchBody", "Comparators", "PostResult"]

_WRITE_SLICE = 32  # pairs (about 70 KB of a typical batch) written between two yields


class BatchBody(Payload):
    """A batch of encoded pairs sent as ``{"pairs":[...]}`` without being joined first.

    Written a slice of pairs at a time, yielding to the event loop between slices: a batch of a
    megabyte is neither copied whole once more nor written in one go, which held the loop — and
    every client request waiting on it — for a millisecond or more (the p99 at 1,000 req/s
    showed it). The length is known up front, so the request carries a Content-Length."""

    _autoclose = True  # bytes in memory: nothing to close

    def __init__(self, items: list[bytes]) -> None:
        super().__init__(items, content_type="application/json")
        self._items = items
        self._size = batch_size(items)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return join_batch(self._items).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        for i, piece in enumerate(batch_slices(self._items, _WRITE_SLICE)):
            if i:
                await asyncio.sleep(0)
            await writer.write(piece)


log = logging.getLogger("shadowtee.proxy.shipper")

# "ok"; "too_large" (413); "rejected" (refused for good: do not retry); "failed" (answered 408,
# 429 or 5xx, or timed out: retry later); "unreachable" (no connection).
PostResult = Literal["ok", "too_large", "rejected", "failed", "unreachable"]

_TRANSIENT = frozenset({408, 429})  # and every 5xx
# Answers about the replica, not the batch: a token it refuses, a route it lacks. The batch is
# kept and the shipper moves on to the next comparator (with one, it retries later).
_MISCONFIGURED = frozenset({401, 403, 404, 405})
_LIMIT_HEADER = "X-Max-Body-Bytes"
_LIMIT_SLACK = 4096  # below the comparator's limit: room for the headers it may count
# What of a comparator's answer is read: enough for an error to log. A 2xx is not read at all, so
# no answer a comparator sends (a huge one included) can make the sidecar hold it.
_ANSWER_READ = 4096
_LIMIT_DIGITS = 15  # a larger X-Max-Body-Bytes than this is no limit worth learning


class Comparators:
    """One comparator URL or a list of replicas to fail over between (empty: none)."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None,
        urls: str | Sequence[str] | None,
        token: str | None,
        experiment: str,
        stats: ProxyStats,
        timeout_s: float,
        backoff_s: float,
        on_limit: Callable[[int], None],
    ) -> None:
        self._session = session
        if isinstance(urls, str):
            urls = [urls]
        self._bases = [u.rstrip("/") for u in urls or ()]
        # Proxies start at different replicas of a list, so a fleet spreads its batches.
        self.current = random.randrange(len(self._bases)) if self._bases else 0
        self._experiment = experiment
        self._stats = stats
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._backoff_s = backoff_s
        self._on_limit = on_limit  # told the largest body the comparator takes, when it says
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._proxy_id = os.urandom(8).hex()
        self._drops_reported: dict[str, int] = {}
        # Set at shutdown: a batch gets no further attempt (it is spooled), so the drain's
        # shipping is bounded by the attempt under way and the last pass's one attempt.
        self.stopping = False

    @property
    def configured(self) -> bool:
        return bool(self._bases)

    def shown(self) -> str:
        """The current comparator's base URL as logs may show it."""
        return self._bases[self.current] if self._bases else "-"

    def _fail_over(self) -> None:
        """Move on to the next comparator of the list (nothing with one)."""
        if len(self._bases) > 1:
            self.current = (self.current + 1) % len(self._bases)
            self._stats.comparator_failovers += 1
            log.warning("comparator: moving on to %s", self.shown())

    async def post(self, payload: bytes | list[bytes], *, retries: int) -> PostResult:
        """POST one batch to ``/v1/pairs``, retrying a failure ``retries`` times with
        exponential backoff and full jitter, moving on to the next replica after each.
        ``payload``: the batch's bytes (a spooled batch), or its encoded pairs (sent as
        :class:`BatchBody`)."""
        assert self._session is not None and self._bases
        failure: PostResult = "failed"
        for attempt in range(retries + 1):
            if attempt:
                if not self.stopping:
                    # Full jitter keeps many proxies from retrying in lockstep after an outage.
                    await asyncio.sleep(random.uniform(0, self._backoff_s * 2 ** (attempt - 1)))
                if self.stopping:  # no more attempts at shutdown: the batch is spooled
                    break
            try:
                # A file-like body: aiohttp warns about (and CI errors on) bytes over 1 MiB.
                body = io.BytesIO(payload) if isinstance(payload, bytes) else BatchBody(payload)
                async with self._session.post(
                    f"{self._bases[self.current]}/v1/pairs",
                    data=body,
                    headers=self._headers,
                    timeout=self._timeout,
                ) as resp:
                    self._learn_limit(resp.headers.get(_LIMIT_HEADER))
                    if 200 <= resp.status < 300:
                        return "ok"  # the answer's body is not needed (nor read)
                    text = await _answer_text(resp)
                    if resp.status == 413:
                        size = len(payload) if isinstance(payload, bytes) else batch_size(payload)
                        log.warning("comparator: batch of %d bytes too large", size)
                        return "too_large"
                    if resp.status in _MISCONFIGURED:
                        self._stats.ship_failures += 1
                        failure = "failed"
                        log.error(
                            "comparator %s answered %d (token or URL wrong?); the batch is kept",
                            self.shown(),
                            resp.status,
                        )
                        self._fail_over()
                        continue
                    if 400 <= resp.status < 500 and resp.status not in _TRANSIENT:
                        log.error("comparator refused a batch (%d): %s", resp.status, text[:300])
                        return "rejected"
                    self._stats.ship_failures += 1
                    failure = "failed"
                    log.warning("comparator answered %d: %s", resp.status, text[:200])
                    self._fail_over()
            except TimeoutError:  # reached but not done in time: maybe this batch's fault
                self._stats.ship_failures += 1
                failure = "failed"
                size = len(payload) if isinstance(payload, bytes) else batch_size(payload)
                log.warning("comparator did not answer a batch of %d bytes in time", size)
                self._fail_over()
            except (aiohttp.ClientError, OSError) as exc:
                self._stats.ship_failures += 1
                failure = "unreachable"
                log.warning("comparator unreachable: %s", exc or type(exc).__name__)
                self._fail_over()
            except Exception:  # a bug must not take the batch with it: it is spooled
                self._stats.ship_failures += 1
                failure = "unreachable"
                log.exception("sending a batch failed")
        return failure

    def _learn_limit(self, header: str | None) -> None:
        """Cut batches below the body limit the comparator announces."""
        if header is None or not header.isascii() or not header.isdigit():
            return
        if len(header) > _LIMIT_DIGITS:  # int() refuses over 4,300 digits; any this long is moot
            return
        self._on_limit(int(header) - _LIMIT_SLACK)

    async def report_drops(self) -> None:
        """Send the cumulative drop counts when they changed; best effort, retried next pass.
        They reach the report through the comparator, cumulative per proxy process."""
        current = {reason: int(n) for reason, n in self._stats.dropped.items() if n}
        if not current or current == self._drops_reported or not self._bases:
            return
        assert self._session is not None
        url = f"{self._bases[self.current]}/v1/experiments/{self._experiment}/drops"
        body = json.dumps({"proxy_id": self._proxy_id, "dropped": current}).encode()
        try:
            async with self._session.post(
                url, data=body, headers=self._headers, timeout=self._timeout
            ) as resp:
                if 200 <= resp.status < 300:
                    self._drops_reported = current
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("drop report not delivered: %s", exc or type(exc).__name__)


async def _answer_text(resp: aiohttp.ClientResponse) -> str:
    """The first ``_ANSWER_READ`` bytes of an answer's body, as text for a log line."""
    data = b""
    async for chunk in resp.content.iter_chunked(_ANSWER_READ):
        data += chunk
        if len(data) >= _ANSWER_READ:
            break
    return data[:_ANSWER_READ].decode("utf-8", errors="replace")
