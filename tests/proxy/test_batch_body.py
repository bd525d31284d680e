"""The batch body the shipper posts: the same bytes as the joined batch, sent a slice at a time.

Through a real aiohttp server on 127.0.0.1: what arrives equals ``join_batch`` of the pairs, with
a Content-Length, for batch sizes around the slice boundary; and while a large batch is written,
other callbacks on the event loop run between the slices (the write does not hold the loop).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from proxy.comparators import BatchBody
from proxy.pair_json import batch_size, join_batch


def _items(n: int, size: int = 40) -> list[bytes]:
    return [b'{"i":%d,"pad":"%s"}' % (i, b"x" * size) for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 2, 7])
def test_the_batch_size_is_the_joined_length(n: int) -> None:
    assert batch_size(_items(n)) == len(join_batch(_items(n)))


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 64, 100])
async def test_the_body_that_arrives_is_the_joined_batch(n: int) -> None:
    got: list[tuple[bytes, str | None]] = []

    async def pairs(request: web.Request) -> web.Response:
        got.append((await request.read(), request.headers.get("Content-Length")))
        return web.json_response({"accepted": n})

    app = web.Application()
    app.router.add_post("/v1/pairs", pairs)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        items = _items(n)
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/v1/pairs", data=BatchBody(items)) as resp,
        ):
            assert resp.status == 200
    finally:
        await runner.cleanup()
    body, length = got[0]
    assert body == join_batch(items) and length == str(len(body))
    assert len(json.loads(body)["pairs"]) == n


class _Recorder:
    """A stream writer that records what the event loop did before each write."""

    def __init__(self, ticks: list[int]) -> None:
        self.ticks = ticks
        self.seen: list[int] = []
        self.chunks: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self.seen.append(len(self.ticks))
        self.chunks.append(chunk)


async def test_other_callbacks_run_between_the_slices_of_a_large_batch() -> None:
    ticks: list[int] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(1)
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    writer = _Recorder(ticks)
    items = _items(200)
    await BatchBody(items).write(writer)  # type: ignore[arg-type]
    stop.set()
    await task
    assert b"".join(writer.chunks) == join_batch(items)
    assert len(writer.chunks) > 1
    # The loop ran the ticker between every two slices.
    assert all(b > a for a, b in zip(writer.seen, writer.seen[1:], strict=False))
