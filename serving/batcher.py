"""Dynamic batching: many small requests, one ``session.run``, each caller gets exactly its rows.

Requests wait in a bounded FIFO. One worker task takes the oldest request and gathers every queued
request with the same *signature key* (input names, dtypes and per-row shapes), in arrival order,
up to ``max_batch`` rows. It waits for company -- at most ``max_delay`` after the oldest request
arrived -- only while the batch is short *and* more requests are on their way (announced by the
HTTP handler between reading a body and submitting it): a lone request on an idle server runs at
once instead of paying the delay. It stacks the inputs, runs the model once in a single-thread
executor (the event loop keeps serving HTTP meanwhile; one thread because an ``InferenceSession``
already uses every core) and slices each output back by row offsets. While a batch runs, new
requests queue up, so under load batches fill without any waiting.

Past ``max_queue`` waiting requests :meth:`Batcher.submit` raises :class:`QueueFullError` at once:
the queue never grows without bound, and the client is told to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        self._pending: deque[_Item] = deque()
        self._pending_rows = 0
        self._arriving = 0
        self._busy = False
        self._idle = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadowtee-infer")
        self._worker: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

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
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(InferenceError("server shutting down"))
        self._pending_rows = 0
        self._executor.shutdown(wait=True)

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
        self._pending.append(item)
        self._pending_rows += rows
        # Wake the worker when it is idle or the batch is full, not on every arrival.
        if len(self._pending) == 1 or self._pending_rows >= self._max_batch or not self._arriving:
            self._wakeup.set()
        return await item.future

    def _take(self) -> list[_Item]:
        """Pop the oldest item and the queued items that share its key, up to max_batch rows."""
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

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            first = self._pending[0]
            # Wait for company only while the batch is short, more requests are on their way,
            # and the oldest request is still young.
            if self._max_batch > 1 and self._max_delay > 0:
                deadline = first.enqueued + self._max_delay
                while self._pending_rows < self._max_batch and self._arriving:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), left)
            batch = [i for i in self._take() if not i.future.done()]
            if not batch:
                continue
            start = time.perf_counter()
            for item in batch:
                self._metrics.queue_seconds.observe(start - item.enqueued)
            self._busy = True
            try:
                feeds = self._stack(batch)
                outputs = await loop.run_in_executor(self._executor, self._run, feeds)
            except Exception as exc:  # a failed batch fails its callers, never the worker
                err = exc if isinstance(exc, InferenceError) else InferenceError(str(exc))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            finally:
                self._busy = False
                self._check_idle()
            self._metrics.inference_seconds.observe(time.perf_counter() - start)
            self._metrics.batch_rows.observe(sum(i.rows for i in batch))
            self._metrics.batch_requests.observe(len(batch))
            self._split(batch, outputs)

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
