"""Real loopback servers for the proxy tests: a production model, a candidate, a comparator.

Each is a small aiohttp app on 127.0.0.1 and an OS-chosen port. Behaviour is switched per test
(hung, slow, 500-ing, garbage, down) and observed through events and recorded requests, never
through timing thresholds.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from comparator.wire import Pair, PairBatch
from proxy.server import serve
from proxy.settings import ProxySettings
from tests.support.net import free_port as free_port
from tests.support.net import serve_app as serve_app

__all__ = [
    "SEEN",
    "FakeCandidate",
    "FakeComparator",
    "RunningProxy",
    "admin_status",
    "free_port",
    "payload_bytes",
    "prod_app",
    "running_proxy",
    "serve_app",
]


def payload_bytes(n: int) -> bytes:
    """``n`` deterministic, non-repeating-looking bytes."""
    block = bytes(range(256)) * 16
    return (block * (n // len(block) + 1))[:n]


SEEN = web.AppKey("seen", list)


def _peer(request: web.Request) -> object:
    """The client address of the connection a request came on (to tell connections apart)."""
    return request.transport.get_extra_info("peername") if request.transport else None


def prod_app(
    release: asyncio.Event | None = None, entered: asyncio.Event | None = None
) -> web.Application:
    """A production model with one route per behaviour the forwarding tests need."""
    seen: list[dict[str, Any]] = []
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append({"headers": dict(request.headers), "body": body, "peer": _peer(request)})
        if entered is not None:
            entered.set()
        if release is not None:
            await release.wait()
        doc = {"model_name": "m", "outputs": [{"name": "y", "shape": [1], "data": [len(body)]}]}
        return web.json_response(doc, headers={"X-Model-Version": "1"})

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, body=b"status body", headers={"X-Custom": "yes"})

    async def sized(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        return web.Response(body=payload_bytes(n), content_type="application/octet-stream")

    async def chunked(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        resp = web.StreamResponse(headers={"Content-Type": "text/plain", "X-Stream": "1"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        data = payload_bytes(n)
        for i in range(0, n, 65536):
            await resp.write(data[i : i + 65536])
        await resp.write_eof()
        return resp

    async def gzipped(_: web.Request) -> web.Response:
        raw = json.dumps({"hello": "world" * 100}).encode()
        return web.Response(
            body=gzip.compress(raw, mtime=0),
            headers={
                "Content-Encoding": "gzip",
                "Content-Type": "application/json",
                "Vary": "Accept-Encoding",
            },
        )

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append({"headers": dict(request.headers), "body": body, "peer": _peer(request)})
        return web.Response(
            body=body,
            headers={"X-Method": request.method, "X-Query": request.query_string},
        )

    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/bytes/{n}", sized)
    app.router.add_get("/chunked/{n}", chunked)
    app.router.add_get("/gzip", gzipped)
    app.router.add_route("*", "/echo", echo)
    app[SEEN] = seen
    return app


@dataclass
class FakeCandidate:
    """A candidate whose behaviour a test switches: ``ok``, ``hang``, ``error500``, ``garbage``."""

    mode: str = "ok"
    requests: list[dict[str, Any]] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    active: int = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            {"headers": dict(request.headers), "body": body, "path": request.path_qs}
        )
        self.active += 1
        self.entered.set()
        try:
            if self.mode == "hang":
                await self.release.wait()
            if self.mode == "error500":
                return web.Response(status=500, text="boom")
            if self.mode == "garbage":
                return web.Response(body=b"\x00not json{", headers={"X-Model-Version": "2"})
            doc = {"model_name": "m", "outputs": [{"name": "y", "shape": [1], "data": [len(body)]}]}
            return web.json_response(doc, headers={"X-Model-Version": "2"})
        finally:
            self.active -= 1


@dataclass
class FakeComparator:
    """``POST /v1/pairs`` that validates every pair with the wire model and records it."""

    token: str | None = None
    fail_status: int | None = None  # answer this status instead of accepting
    raw: list[bytes] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    received: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/pairs", self._ingest)
        return app

    @property
    def request_ids(self) -> list[str]:
        return [p.request_id for p in self.pairs]

    async def _ingest(self, request: web.Request) -> web.Response:
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401, text="bad token")
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, text="unavailable")
        body = await request.read()
        assert request.content_type == "application/json"
        batch = PairBatch.model_validate_json(body).pairs
        self.raw.append(body)
        self.pairs.extend(batch)
        self.received.set()
        return web.json_response({"accepted": len(batch)})


@dataclass
class RunningProxy:
    url: str
    admin: str
    settings: ProxySettings
    stop: asyncio.Event
    task: asyncio.Task[Any]


async def wait_for(predicate: Any, what: str, limit_s: float = 10.0) -> None:
    """Poll ``predicate()`` on the loop (bounded) — for state that has no event of its own."""
    for _ in range(int(limit_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@asynccontextmanager
async def running_proxy(**fields: Any) -> AsyncIterator[RunningProxy]:
    """Run the real proxy (both ports on 127.0.0.1:0) in this loop until the block ends."""
    fields.setdefault("listen", "127.0.0.1:0")
    fields.setdefault("admin_listen", "127.0.0.1:0")
    fields.setdefault("flush_interval_ms", 50)
    fields.setdefault("retry_backoff_ms", 10)
    settings = ProxySettings(**fields)
    stop = asyncio.Event()
    ready: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            settings,
            stop=stop,
            handle_signals=False,
            on_ready=lambda d, a: ready.set_result((d, a)),
        )
    )
    waiting: set[asyncio.Future[Any]] = {task, ready}
    done, _ = await asyncio.wait(waiting, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up error
    data, admin = ready.result()
    proxy = RunningProxy(data, admin, settings, stop, task)
    try:
        yield proxy
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def admin_status(client: aiohttp.ClientSession, admin: str) -> dict[str, Any]:
    """The proxy's ``/admin/status`` document."""
    async with client.get(admin + "/admin/status") as resp:
        doc: dict[str, Any] = await resp.json()
        return doc
