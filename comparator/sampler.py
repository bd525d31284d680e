"""The memory sampler: scrape the model servers' ``/metrics`` and store RSS and GPU memory.

Every ``interval`` seconds each configured target (``prod``, ``cand``) is fetched with a short
timeout and parsed with prometheus_client's text parser. From it we keep:

* ``process_resident_memory_bytes`` → kind ``rss``, with ``shadowtee_serving_memory_limit_bytes``
  as its limit when the server exposes one (the container's cgroup limit);
* ``shadowtee_serving_gpu_memory_used_bytes`` → kind ``gpu``, with
  ``shadowtee_serving_gpu_memory_total_bytes`` as its limit (summed over devices).

A target that is unreachable, slow, non-200 or unparseable is a *gap*: it counts
``shadowtee_comparator_scrape_errors_total{side}`` and the loop goes on. Nothing here raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from comparator.metrics import ComparatorMetrics
from comparator.store.reads import MemorySample
from comparator.store.store import Store

__all__ = ["MemorySampler", "parse_memory"]

log = logging.getLogger(__name__)

RSS = "process_resident_memory_bytes"
MEM_LIMIT = "shadowtee_serving_memory_limit_bytes"
GPU_USED = "shadowtee_serving_gpu_memory_used_bytes"
GPU_TOTAL = "shadowtee_serving_gpu_memory_total_bytes"
WANTED = frozenset({RSS, MEM_LIMIT, GPU_USED, GPU_TOTAL})
MAX_SCRAPE_BYTES = 4 * 1024 * 1024


def parse_memory(text: str, side: str, ts: datetime) -> list[MemorySample]:
    """The memory samples in one Prometheus text exposition (raises ValueError if unparseable)."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in WANTED:
                sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)
    out = []
    if RSS in sums:
        out.append(MemorySample(ts, side, "rss", sums[RSS], sums.get(MEM_LIMIT)))
    if GPU_USED in sums:
        out.append(MemorySample(ts, side, "gpu", sums[GPU_USED], sums.get(GPU_TOTAL)))
    return out


class MemorySampler:
    """Scrapes ``targets`` (side → URL) into ``store`` under ``experiment`` until stopped."""

    def __init__(
        self,
        store: Store,
        targets: Mapping[str, str],
        *,
        experiment: str,
        metrics: ComparatorMetrics,
        interval_s: float = 15.0,
        timeout_s: float = 2.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        gate: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store = store
        self.gate = gate  # scrape only while it says so (the leader, among replicas)
        self.targets = dict(targets)
        self.experiment = experiment
        self.metrics = metrics
        self.interval_s = interval_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.clock = clock

    async def _scrape(
        self, session: aiohttp.ClientSession, side: str, url: str, ts: datetime
    ) -> list[MemorySample]:
        try:
            async with session.get(url, timeout=self.timeout) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                body = await resp.content.read(MAX_SCRAPE_BYTES)
            samples = parse_memory(body.decode("utf-8", "replace"), side, ts)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.metrics.scrape_errors[side].inc()
            log.warning("memory scrape of %s (%s) failed: %s", side, url, exc or type(exc).__name__)
            return []
        self.metrics.scrapes[side].inc()
        return samples

    async def scrape_once(self, session: aiohttp.ClientSession) -> list[MemorySample]:
        """Scrape every target once, concurrently, and store what came back."""
        ts = self.clock()
        results = await asyncio.gather(
            *(self._scrape(session, side, url, ts) for side, url in sorted(self.targets.items()))
        )
        samples = [s for r in results for s in r]
        if samples:
            await self.store.add_memory_samples(self.experiment, samples)
            self.metrics.memory_samples.inc(len(samples))
        return samples

    async def run(self, *, iterations: int | None = None) -> None:
        """Scrape every ``interval_s`` (``iterations`` times, or until cancelled)."""
        async with aiohttp.ClientSession() as session:
            n = 0
            while iterations is None or n < iterations:
                n += 1
                if not self.gate():
                    await asyncio.sleep(self.interval_s)
                    continue
                try:
                    await self.scrape_once(session)
                except Exception:  # a store hiccup must not end sampling; the gap is logged
                    log.exception("storing memory samples failed")
                if iterations is None or n < iterations:
                    await asyncio.sleep(self.interval_s)

    def start(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self.run(), name="memory-sampler")

    @staticmethod
    async def stop(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
