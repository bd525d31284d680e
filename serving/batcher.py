"""Dynamic batching: many small requests, one ``session.run``, each caller gets exactly its rows.

Requests wait in a bounded FIFO. The worker takes the oldest request and gathers every queued
request with the same *signature key* (input names, dtypes and per-row shapes), in arrival order,
up to ``max_batch`` rows. It waits for company -- at most ``max_delay`` after the oldest request
arrived -- only while the batch is short *and* more requests are on their way (announced by the
HTTP handler between reading a body and submitting it): a lone request on an idle server runs at
once instead of paying the delay.

Batches run on one inference thread (one because an ``InferenceSession`` has its own intra-op
threads). The thread does not go back to the event loop between batches: when a batch is done it
hands the outputs to the loop (one ``call_soon_threadsafe`` per batch, where each caller's rows
are sliced off by row offset) and at once takes the next batch that is ready -- full, or whose
oldest request has waited ``max_delay``, or with nobody else on the way. Under load the model
therefore runs back to back while the event loop parses the next requests and answers the last
ones, instead of idling until the loop gets round to starting it; the thread returns to the loop
only when the queue is empty or a short batch should wait for company.

Past ``max_queue`` waiting requests :meth:`Batcher.submit` raises :class:`QueueFullError` at once:
the queue never grows without bound, and the client is told to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from serving.exceptions import InferenceError, QueueFullError
from serving.metrics import ServingMetrics

__all__ = ["Batcher", "RunFn"]

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
"""Blocking inference: stacked feeds -> every output (first dimension = rows)."""


def _key(feeds: dict[str, np.ndarray]) -> tuple[object, ...]:
    return tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(feeds.items()))


@dataclass(eq=False)
class _Item:
    feeds: dict[str, np.ndarray]
    rows: int
    key: tuple[object, ...]
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Gathers requests into batches and runs them on one inference thread.

    ``run`` is called with the stacked feeds of one batch and must return every output;
    ``batchable=False`` (a model whose first dimension is fixed) runs each request alone.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        metrics: ServingMetrics,
        batchable: bool = True,
    ) -> None:
        self._run = run
        self._max_batch = max_batch if batchable else 1
        self._max_delay = max_delay_s
        self._max_queue = max_queue
        self._metrics = metrics
        # The queue is shared with the inference thread, which takes its next batch itself.
        self._lock = threading.Lock()
        self._pending: deque[_Item] = deque()
        self._pending_rows = 0
        self._arriving = 0
        self._busy = False
        self._idle = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadowtee-infer")
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._worker = self._loop.create_task(self._gather(), name="batcher")

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until nothing is queued, arriving or running (bounded), e.g. before a swap-out."""
        self._check_idle()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)

    def _check_idle(self) -> None:
        if self._pending or self._arriving or self._busy:
            self._idle.clear()
        else:
            self._idle.set()

    async def close(self) -> None:
        """Stop the worker, fail what is still queued, and release the inference thread."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        with self._lock:
            items, self._pending = list(self._pending), deque()
            self._pending_rows = 0
        for item in items:
            if not item.future.done():
                item.future.set_exception(InferenceError("server shutting down"))
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The single inference thread; warm-up runs go through it too, bypassing the queue."""
        return self._executor

    def announce(self) -> None:
        """A request is on its way (its body is being read and checked)."""
        self._arriving += 1

    def withdraw(self) -> None:
        """The announced request has been submitted or rejected."""
        self._arriving -= 1
        self._check_idle()
        if self._arriving == 0:
            self._wakeup.set()  # nobody else is coming: a waiting batch can go now

    async def submit(self, feeds: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Queue one request of ``rows`` rows and wait for its own slice of every output."""
        if len(self._pending) >= self._max_queue:
            self._metrics.shed.inc()
            raise QueueFullError(f"queue full ({self._max_queue} requests waiting); retry later")
        item = _Item(feeds, rows, _key(feeds), asyncio.get_running_loop().create_future())
        with self._lock:
            self._pending.append(item)
            self._pending_rows += rows
            first = len(self._pending) == 1
        self._idle.clear()
        # Wake the worker when it is idle or the batch is full, not on every arrival.
        if first or self._pending_rows >= self._max_batch or not self._arriving:
            self._wakeup.set()
        return await item.future

    def _take(self) -> list[_Item]:
        """Pop the oldest item and the queued items that share its key, up to max_batch rows.

        Called with ``self._lock`` held.
        """
        first = self._pending.popleft()
        batch, rows = [first], first.rows
        if rows >= self._max_batch:
            self._pending_rows -= rows
            return batch
        keep: deque[_Item] = deque()
        while self._pending and rows < self._max_batch:
            item = self._pending.popleft()
            if item.key == first.key and rows + item.rows <= self._max_batch:
                batch.append(item)
                rows += item.rows
            else:
                keep.append(item)
        keep.extend(self._pending)
        self._pending = keep
        self._pending_rows = sum(i.rows for i in keep)
        return batch

    def _ready(self) -> bool:
        """A batch may start now: it is full, its oldest request waited enough, or nobody comes.

        Called with ``self._lock`` held, from either thread.
        """
        if not self._pending:
            return False
        if self._max_batch == 1 or self._max_delay <= 0:
            return True
        if self._pending_rows >= self._max_batch or not self._arriving:
            return True
        return time.perf_counter() >= self._pending[0].enqueued + self._max_delay

    async def _gather(self) -> None:
        """Event-loop side: wait for a first batch, then hand the inference thread the work."""
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Wait for company only while the batch is short, more requests are on their way,
            # and the oldest request is still young.
            while not self._ready():
                left = self._pending[0].enqueued + self._max_delay - time.perf_counter()
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), max(left, 0.0))
            with self._lock:
                batch = self._take()
            self._busy = True
            try:
                await loop.run_in_executor(self._executor, self._run_batches, batch)
            finally:
                self._busy = False
                self._check_idle()

    def _run_batches(self, batch: list[_Item]) -> None:
        """Inference thread: run ``batch``, then every batch that is ready by the time it ends."""
        while True:
            self._run_one([i for i in batch if not i.future.done()])
            with self._lock:
                if not self._ready():
                    return
                batch = self._take()

    def _run_one(self, batch: list[_Item]) -> None:
        if not batch:
            return
        cpu = time.thread_time()
        try:
            self._run_timed(batch)
        finally:
            self._metrics.inference_cpu.inc(time.thread_time() - cpu)

    def _run_timed(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        for item in batch:
            self._metrics.queue_seconds.observe(start - item.enqueued)
        try:
            feeds = self._stack(batch)
            began = time.perf_counter()
            outputs = self._run(feeds)
            self._metrics.inference_seconds.observe(time.perf_counter() - began)
        except Exception as exc:  # a failed batch fails its callers, never the worker
            err = exc if isinstance(exc, InferenceError) else InferenceError(str(exc))
            self._deliver_soon(batch, err)
            return
        self._metrics.batch_rows.observe(sum(i.rows for i in batch))
        self._metrics.batch_requests.observe(len(batch))
        self._deliver_soon(batch, outputs)

    def _deliver_soon(self, batch: list[_Item], result: dict[str, np.ndarray] | Exception) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, batch, result)

    @staticmethod
    def _deliver(batch: list[_Item], result: dict[str, np.ndarray] | Exception) -> None:
        """Event loop: resolve every caller's future with its rows (or the batch's error)."""
        if isinstance(result, Exception):
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(result)
            return
        Batcher._split(batch, result)

    @staticmethod
    def _stack(batch: list[_Item]) -> dict[str, np.ndarray]:
        if len(batch) == 1:
            return batch[0].feeds
        return {n: np.concatenate([i.feeds[n] for i in batch]) for n in batch[0].feeds}

    @staticmethod
    def _split(batch: list[_Item], outputs: dict[str, np.ndarray]) -> None:
        total = sum(i.rows for i in batch)
        offset = 0
        for item in batch:
            part = {
                # An output without a leading batch dimension belongs to every caller whole.
                name: arr[offset : offset + item.rows]
                if arr.ndim and arr.shape[0] == total
                else arr
                for name, arr in outputs.items()
            }
            offset += item.rows
            if not item.future.done():
                item.future.set_result(part)
