"""The batcher with a plain-numpy run function: batches form, rows go back to their callers."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.batcher import Batcher
from serving.exceptions import InferenceError, QueueFullError
from serving.metrics import ServingMetrics


class Recorder:
    """``run`` doubles ``x`` and records the row count of every batch; ``gate`` can hold it."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        assert self.gate.wait(10)
        self.batches.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2, "const": np.array(7.0)}


def _batcher(run: Recorder, **kw: float) -> Batcher:
    opts = {"max_batch": 64, "max_delay_s": 0.05, "max_queue": 100, **kw}
    return Batcher(
        run,
        max_batch=int(opts["max_batch"]),
        max_delay_s=opts["max_delay_s"],
        max_queue=int(opts["max_queue"]),
        metrics=ServingMetrics(CollectorRegistry()),
    )


async def test_concurrent_callers_of_different_sizes_get_exactly_their_rows() -> None:
    run = Recorder()
    b = _batcher(run, max_batch=64, max_delay_s=0.2)
    b.start()
    try:
        sizes = [1, 3, 2, 5, 1, 4, 7, 1]
        inputs = []
        start = 0
        for n in sizes:
            inputs.append(np.arange(start, start + n, dtype=np.float32).reshape(n, 1))
            start += n
        results = await asyncio.gather(*(b.submit({"x": x}, len(x)) for x in inputs))
    finally:
        await b.close()
    for x, out in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(out["y"], x * 2)
        assert float(out["const"]) == 7.0  # an unbatched output goes whole to everyone
    assert sum(run.batches) == sum(sizes)
    assert len(run.batches) < len(sizes), "requests were never batched together"


async def test_batch_never_exceeds_max_batch_rows() -> None:
    run = Recorder()
    run.gate.clear()
    b = _batcher(run, max_batch=4, max_delay_s=0.0)
    b.start()
    try:
        first = asyncio.ensure_future(b.submit({"x": np.zeros((1, 1), np.float32)}, 1))
        await asyncio.to_thread(run.entered.wait, 10)
        rest = [
            asyncio.ensure_future(b.submit({"x": np.full((n, 1), i, np.float32)}, n))
            for i, n in enumerate([2, 2, 3, 1])
        ]
        await asyncio.sleep(0)
        run.gate.set()
        await asyncio.gather(first, *rest)
    finally:
        await b.close()
    assert run.batches[0] == 1
    assert max(run.batches) <= 4
    assert sum(run.batches) == 9


async def test_requests_with_different_row_shapes_are_not_mixed() -> None:
    run = Recorder()
    b = _batcher(run, max_delay_s=0.05)
    b.start()
    try:
        a, c = await asyncio.gather(
            b.submit({"x": np.ones((2, 3), np.float32)}, 2),
            b.submit({"x": np.ones((1, 5), np.float32)}, 1),
        )
    finally:
        await b.close()
    assert a["y"].shape == (2, 3) and c["y"].shape == (1, 5)
    assert sorted(run.batches) == [1, 2]


async def test_full_queue_sheds_at_once() -> None:
    run = Recorder()
    run.gate.clear()
    b = _batcher(run, max_batch=1, max_queue=1, max_delay_s=0.0)
    b.start()
    try:
        running = asyncio.ensure_future(b.submit({"x": np.zeros((1, 1), np.float32)}, 1))
        await asyncio.to_thread(run.entered.wait, 10)  # first request is on the thread
        waiting = asyncio.ensure_future(b.submit({"x": np.zeros((1, 1), np.float32)}, 1))
        await asyncio.sleep(0)
        assert b.depth == 1
        with pytest.raises(QueueFullError, match="queue full"):
            await b.submit({"x": np.zeros((1, 1), np.float32)}, 1)
        run.gate.set()
        await asyncio.gather(running, waiting)
    finally:
        await b.close()


async def test_a_failing_batch_fails_its_callers_and_the_worker_goes_on() -> None:
    calls = 0

    def flaky(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return {"y": feeds["x"]}

    b = Batcher(flaky, max_batch=8, max_delay_s=0.0, max_queue=10,
                metrics=ServingMetrics(CollectorRegistry()))  # fmt: skip
    b.start()
    try:
        with pytest.raises(InferenceError, match="boom"):
            await b.submit({"x": np.zeros((1, 1), np.float32)}, 1)
        out = await b.submit({"x": np.ones((1, 1), np.float32)}, 1)
    finally:
        await b.close()
    assert out["y"].tolist() == [[1.0]]


async def test_a_lone_request_on_an_idle_server_does_not_wait_for_the_delay() -> None:
    run = Recorder()
    b = _batcher(run, max_delay_s=3600.0)  # waiting would hang the test
    b.start()
    try:
        out = await asyncio.wait_for(b.submit({"x": np.ones((1, 1), np.float32)}, 1), 30)
    finally:
        await b.close()
    assert out["y"].tolist() == [[2.0]]


async def test_the_batch_waits_for_an_announced_request_then_runs_both_together() -> None:
    run = Recorder()
    b = _batcher(run, max_delay_s=3600.0)
    b.start()
    try:
        b.announce()  # a second request is being read
        first = asyncio.ensure_future(b.submit({"x": np.ones((1, 1), np.float32)}, 1))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not first.done() and run.batches == []
        b.withdraw()
        second = await b.submit({"x": np.full((2, 1), 3.0, np.float32)}, 2)
        out = await first
    finally:
        await b.close()
    assert run.batches == [3]
    assert out["y"].tolist() == [[2.0]] and second["y"].tolist() == [[6.0], [6.0]]


async def test_queued_batches_run_back_to_back_while_the_event_loop_is_busy() -> None:
    """The inference thread takes the next ready batch itself, without waiting for the loop."""
    seen: list[int] = []
    entered, gate, second_ran = threading.Event(), threading.Event(), threading.Event()

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not seen:
            entered.set()
            assert gate.wait(10)
        seen.append(len(feeds["x"]))
        if len(seen) == 2:
            second_ran.set()
        return {"y": feeds["x"] + 1}

    b = Batcher(run, max_batch=2, max_delay_s=0.0, max_queue=10,
                metrics=ServingMetrics(CollectorRegistry()))  # fmt: skip
    b.start()
    try:
        calls = [asyncio.ensure_future(b.submit({"x": np.zeros((1, 1), np.float32)}, 1))]
        await asyncio.to_thread(entered.wait, 10)  # the first request is on the thread
        calls += [
            asyncio.ensure_future(b.submit({"x": np.full((1, 1), i, np.float32)}, 1))
            for i in (1, 2)
        ]
        await asyncio.sleep(0)
        assert b.depth == 2
        gate.set()
        # Block the event loop: the second batch must still start.
        assert second_ran.wait(10), "the next batch waited for the event loop"
        results = await asyncio.gather(*calls)
    finally:
        await b.close()
    assert seen == [1, 2]
    assert [r["y"].item() for r in results] == [1.0, 2.0, 3.0]
