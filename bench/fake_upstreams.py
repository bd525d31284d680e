"""Fake production, candidate and comparator servers for the proxy benchmark.

Production and the candidate are bare asyncio protocols with a fixed answer (so the shared server
core spends its time on the proxies, not on the fakes); the comparator is a small aiohttp app.
Each role runs in its own process (``python bench/fake_upstreams.py ROLE ...``) so that the proxy
under test, the upstreams and the load generator never share an event loop. A server binds
127.0.0.1 port 0 and prints ``READY <port>`` on stdout once it accepts connections.

Roles:

* ``prod``: answers every request with the same ~1 KB OIP-v2-like JSON body, as fast as it can.
* ``candidate``: the same body, optionally after ``--delay-ms`` (a slow candidate) or never
  (``--hang``: the handler waits until the client goes away). It counts the requests it received
  and the responses it completed, so the benchmark can say how many teed requests reached it.
* ``comparator``: accepts ``POST /v1/pairs`` (JSON ``{"pairs": [...]}`` or NDJSON) and counts
  pairs, batches and distinct request ids.

Every role serves ``GET /__bench/stats`` (JSON counters) and ``POST /__bench/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
import sys
from typing import Any

import httptools
from aiohttp import web
from pydantic_core import from_json

__all__ = ["RESPONSE_BODY", "main"]

STATS_PATH = "/__bench/stats"
RESET_PATH = "/__bench/reset"


def _response_body() -> bytes:
    """An OIP v2 inference response of about 1 KB: ten class probabilities plus an embedding."""
    probs = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.55]
    embedding = [round(0.001 * i, 6) for i in range(100)]
    doc = {
        "model_name": "bench",
        "model_version": "1",
        "id": "bench",
        "outputs": [
            {"name": "probs", "datatype": "FP32", "shape": [1, 10], "data": probs},
            {"name": "embedding", "datatype": "FP32", "shape": [1, 100], "data": embedding},
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


RESPONSE_BODY = _response_body()


class Counters:
    """Plain counters; one event loop per process, so no locking is needed."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.ids: set[str] = set()

    def bump(self, name: str, by: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + by

    def snapshot(self) -> dict[str, Any]:
        return {**self.values, "unique_ids": len(self.ids)}

    def reset(self) -> None:
        self.values.clear()
        self.ids.clear()


def _stats_response(counters: Counters, request: web.BaseRequest) -> web.Response | None:
    """Serve the bench-only control paths; ``None`` when the request is a normal one."""
    if request.path == STATS_PATH:
        return web.json_response(counters.snapshot())
    if request.path == RESET_PATH:
        counters.reset()
        return web.json_response({"reset": True})
    return None


# shadowtee's pair encoder writes each pair as {"v":1,"request_id":"…", … "candidate":{"outcome":"…"
_ID = re.compile(rb'\{"v":1,"request_id":"((?:[^"\\]|\\.)*)"')
_CAND_OUTCOME = re.compile(rb'"candidate":\{"outcome":"([a-z]+)"')


def make_comparator_handler(counters: Counters) -> Any:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        control = _stats_response(counters, request)
        if control is not None:
            return control
        if request.method != "POST" or request.path != "/v1/pairs":
            return web.json_response({"error": "not found"}, status=404)
        raw = await request.read()
        ids = _ID.findall(raw)
        outcomes = _CAND_OUTCOME.findall(raw)
        if ids and len(ids) == len(outcomes) and request.content_type != "application/x-ndjson":
            # A batch as shadowtee writes it: its ids and outcomes read by two C-speed scans
            # instead of parsing every pair, so the fake costs the proxy's core little (issue:
            # a fair run gives the proxy its core).
            counters.bump("batches")
            counters.bump("pairs", len(ids))
            counters.ids.update(i.decode("ascii", "replace") for i in ids)
            for outcome in outcomes:
                counters.bump(f"cand_{outcome.decode()}")
            return web.json_response({"accepted": len(ids)})
        try:
            if request.content_type == "application/x-ndjson":
                pairs = [from_json(line) for line in raw.splitlines() if line.strip()]
            else:
                # pydantic-core's parser: the fake comparator should cost the shared core as
                # little as the other fakes do.
                pairs = from_json(raw)["pairs"]
        except (ValueError, KeyError, TypeError) as exc:
            counters.bump("bad_batches")
            return web.json_response({"error": f"malformed batch: {exc}"}, status=400)
        counters.bump("batches")
        counters.bump("pairs", len(pairs))
        for pair in pairs:
            counters.ids.add(str(pair.get("request_id")))
            outcome = (pair.get("candidate") or {}).get("outcome", "missing")
            counters.bump(f"cand_{outcome}")
        return web.json_response({"accepted": len(pairs)})

    return handle


_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
_OK_RESPONSE = _OK_HEAD % len(RESPONSE_BODY) + RESPONSE_BODY


class _RawModel(asyncio.Protocol):
    """The production and candidate fakes: a fixed answer on a bare protocol (llhttp parsing).

    An upstream this cheap keeps the benchmark about the proxies: on the shared server core the
    fakes' own per-request cost would otherwise cap every proxy's throughput alike.
    """

    def __init__(self, counters: Counters, delay_s: float, hang: bool, count: bool) -> None:
        self._counters = counters
        self._delay_s = delay_s
        self._hang = hang
        self._count = count
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        url, self._url = self._url, b""
        if url.startswith(b"/__bench/"):
            if url.startswith(RESET_PATH.encode()):
                self._counters.reset()
                self._reply(b'{"reset": true}')
            else:
                self._reply(json.dumps(self._counters.snapshot()).encode())
            return
        if self._count:
            self._counters.bump("received")
        if self._hang:
            return  # never answer; the connection closes when the proxy gives up on it
        if self._delay_s > 0:
            asyncio.get_running_loop().call_later(self._delay_s, self._answer)
        else:
            self._answer()

    def _answer(self) -> None:
        if self._transport is None:
            return
        if self._count:
            self._counters.bump("completed")
        self._transport.write(_OK_RESPONSE)

    def _reply(self, body: bytes) -> None:
        if self._transport is not None:
            self._transport.write(_OK_HEAD % len(body) + body)


async def serve(role: str, delay_ms: float, hang: bool) -> None:
    counters = Counters()
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the OS picks a free port; we report it below
    runner: web.ServerRunner | None = None
    raw: asyncio.Server | None = None
    if role == "comparator":
        server = web.Server(make_comparator_handler(counters), access_log=None)
        runner = web.ServerRunner(server)
        await runner.setup()
        await web.SockSite(runner, sock, backlog=4096).start()
    else:
        delay_s = delay_ms / 1000.0
        candidate = role == "candidate"
        sock.listen(4096)
        raw = await loop.create_server(
            lambda: _RawModel(counters, delay_s, hang and candidate, candidate), sock=sock
        )
    port = sock.getsockname()[1]
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if runner is not None:
        await runner.cleanup()
    if raw is not None:
        raw.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("role", choices=("prod", "candidate", "comparator"))
    parser.add_argument("--delay-ms", type=float, default=0.0, help="candidate: answer after N ms")
    parser.add_argument("--hang", action="store_true", help="candidate: never answer")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is in the lock; plain asyncio still works
        pass
    asyncio.run(serve(args.role, args.delay_ms, args.hang))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
