"""Fake production, candidate and comparator servers for the proxy benchmark.

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
import signal
import socket
import sys
from typing import Any

from aiohttp import web

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
JSON_HEADERS = {"Content-Type": "application/json"}


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


def make_prod_handler(counters: Counters) -> Any:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        control = _stats_response(counters, request)
        if control is not None:
            return control
        await request.read()
        return web.Response(body=RESPONSE_BODY, headers=JSON_HEADERS)

    return handle


def make_candidate_handler(counters: Counters, delay_s: float, hang: bool) -> Any:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        control = _stats_response(counters, request)
        if control is not None:
            return control
        counters.bump("received")
        await request.read()
        if hang:
            # Wait "forever"; the server cancels the handler when the client disconnects, so
            # abandoned calls do not pile up inside this process. The bound keeps it finite.
            await asyncio.sleep(3600)
        elif delay_s > 0:
            await asyncio.sleep(delay_s)
        counters.bump("completed")
        return web.Response(body=RESPONSE_BODY, headers=JSON_HEADERS)

    return handle


def make_comparator_handler(counters: Counters) -> Any:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        control = _stats_response(counters, request)
        if control is not None:
            return control
        if request.method != "POST" or request.path != "/v1/pairs":
            return web.json_response({"error": "not found"}, status=404)
        raw = await request.read()
        try:
            if request.content_type == "application/x-ndjson":
                pairs = [json.loads(line) for line in raw.splitlines() if line.strip()]
            else:
                pairs = json.loads(raw)["pairs"]
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


async def serve(role: str, delay_ms: float, hang: bool) -> None:
    counters = Counters()
    if role == "prod":
        handler = make_prod_handler(counters)
    elif role == "candidate":
        handler = make_candidate_handler(counters, delay_ms / 1000.0, hang)
    else:
        handler = make_comparator_handler(counters)
    server = web.Server(handler, handler_cancellation=True, access_log=None)
    runner = web.ServerRunner(server)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the OS picks a free port; we report it below
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    port = sock.getsockname()[1]
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


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
