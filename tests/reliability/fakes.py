"""Real loopback parts for the reliability suite: fake upstreams and a real proxy process.

* :class:`LoopThread` runs an asyncio loop in a background thread; the fakes (small aiohttp apps)
  live on it, so a test — synchronous or async — and the proxy *process* never share a loop with
  them. State the fakes record is appended from that loop and read from the test (plain lists,
  atomic under the GIL); waiting is done with :func:`wait_until`, bounded in count and time.
* :class:`FakeProduction` and :class:`FakeCandidate` pick their behaviour from the model name in
  ``/v2/models/{mode}/infer`` (the default tee route), so one proxy exercises every fault and each
  request is tagged by its path: ``ok``, ``hang``, ``reset``, ``e500``, ``garbage``, ``big``, ...
* :class:`FakeComparator` records every pair it is sent (validated against the wire model).
* :class:`RawProduction` is a TCP server that records the exact bytes it receives, to show that a
  hostile client's ambiguous request never reaches production in an ambiguous form.

The proxy itself runs as a real process: see :mod:`tests.reliability.proxy_process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from comparator.wire import Pair, PairBatch
from tests.reliability.proxy_process import ProxyProcess
from tests.support.net import free_port as free_port
from tests.support.poll import wait_until as wait_until

__all__ = [
    "BIG_BYTES",
    "DEEP_BODY",
    "LONG_NUMBER_BODY",
    "FakeCandidate",
    "FakeComparator",
    "FakeProduction",
    "LoopThread",
    "ProxyProcess",
    "RawProduction",
    "free_port",
    "infer_body",
    "wait_until",
]

T = TypeVar("T")

BIG_BYTES = 50 * 1024 * 1024  # the candidate's "big" answer: 50 MiB
# Valid JSON, 200 levels deep: inside a batch ({"pairs":[{"candidate":{"body": ...) it is past the
# batch parser's depth limit, so it must travel as its size, never make the batch unparseable.
DEEP_BODY = b'{"outputs":' + b"[" * 199 + b"]" * 199 + b"}"
# Valid JSON with an integer of 4,301 digits: past what the batch parser takes ("number out of
# range"), so it must not be embedded either.
LONG_NUMBER_BODY = b'{"outputs":[' + b"7" * 4301 + b"]}"
RID = "X-Shadow-Request-Id"


def infer_body(i: int, size: int = 0) -> bytes:
    """A small OIP v2 request; ``size`` pads it to roughly that many bytes."""
    doc: dict[str, Any] = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [i]}]}
    if size:
        doc["parameters"] = {"pad": "p" * size}
    return json.dumps(doc).encode()


class LoopThread:
    """An asyncio loop on a daemon thread, hosting aiohttp apps on 127.0.0.1."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fakes", daemon=True)
        self._runners: list[web.AppRunner] = []
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def serve(self, app: web.Application, port: int = 0) -> str:
        """Start ``app`` (on ``port``, 0 = any) and return its base URL."""

        async def start() -> str:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
            self._runners.append(runner)
            host, bound = runner.addresses[0][:2]
            return f"http://{host}:{bound}"

        return self.run(start())

    def stop_app(self, url: str) -> None:
        """Stop the app serving ``url`` (the port then refuses connections)."""

        async def stop() -> None:
            for runner in list(self._runners):
                host, bound = runner.addresses[0][:2]
                if url == f"http://{host}:{bound}":
                    self._runners.remove(runner)
                    await runner.cleanup()

        self.run(stop())

    def close(self) -> None:
        async def stop_all() -> None:
            for runner in reversed(self._runners):
                await runner.cleanup()
            self._runners.clear()
            # Handlers still parked on a gate nobody opened: cancel them, so none is destroyed
            # pending when the loop closes.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(stop_all(), timeout=15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Gate:
    """A release switch for hung handlers, set from any thread."""

    def __init__(self, lt: LoopThread) -> None:
        self._lt = lt
        self.event = asyncio.Event()

    def open(self) -> None:
        self._lt.call(self.event.set)


def _oip(name: str, value: float, extra: dict[str, Any] | None = None) -> bytes:
    doc: dict[str, Any] = {
        "model_name": name,
        "outputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": [value]}],
    }
    if extra:
        doc.update(extra)
    return json.dumps(doc).encode()


async def _reset_after(request: web.Request, declared: int, sent: bytes) -> web.StreamResponse:
    """Send headers promising ``declared`` bytes, send ``sent``, then drop the connection."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = declared
    await resp.prepare(request)
    await resp.write(sent)
    assert request.transport is not None
    request.transport.abort()  # RST, not a clean FIN: the client sees a broken body
    return resp


@dataclass
class FakeProduction:
    """Production: ``ok`` answers a body derived from the request; other modes are faults.

    Modes (``p`` for production, so they never collide with the candidate's): ``ok`` (or any
    other name), ``phang`` (until :attr:`gate` opens), ``preset`` (small Content-Length,
    connection dropped mid-body), ``presetbig`` (5 MiB declared, so the proxy streams it, dropped
    after 64 KiB), ``pstream`` (chunked: one chunk, then waits for the gate).
    """

    lt: LoopThread
    seen: list[dict[str, Any]] = field(default_factory=list)
    gate: Gate = field(init=False)

    def __post_init__(self) -> None:
        self.gate = Gate(self.lt)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/v2/models/{mode}/infer", self._infer)
        app.router.add_get("/ping", self._ping)
        return app

    async def _ping(self, _: web.Request) -> web.Response:
        return web.Response(text="pong")

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        mode = request.match_info["mode"]
        body = await request.read()
        self.seen.append({"mode": mode, "headers": dict(request.headers), "body": body})
        if mode == "phang":
            await self.gate.event.wait()
        if mode == "preset":
            return await _reset_after(request, 1000, b'{"partial": ')
        if mode == "presetbig":
            return await _reset_after(request, 5 * 1024 * 1024, b" " * 65536)
        if mode == "pstream":
            resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b"first chunk\n" * 1000)
            await self.gate.event.wait()
            await resp.write(b"last chunk\n")
            await resp.write_eof()
            return resp
        # Deterministic in the request body only, so a direct call and a proxied one compare.
        return web.Response(
            body=_oip("prod", float(len(body)), {"echo_sha": hashlib.sha256(body).hexdigest()}),
            content_type="application/json",
            headers={"X-Model-Version": "1", "X-Prod-Custom": "kept"},
        )


@dataclass
class FakeCandidate:
    """Candidate: mode from the model name; records every request it receives.

    Modes: ``ok``; ``hang`` (no answer until the gate opens); ``hangheaders`` (headers sent, body
    never); ``reset`` (connection dropped mid-body); ``e500``; ``garbage`` (200 with non-JSON);
    ``deep`` (200 with JSON nested 200 levels deep: valid alone, too deep inside a batch);
    ``longnumber`` (200 with JSON holding a 4,301-digit integer: valid, but not to the batch
    parser);
    ``big`` (200 with 50 MiB of JSON); ``swap`` (answers as if for another request: the id header
    and body name the previous request's id); ``echo`` (the headers it received, in its body).
    """

    lt: LoopThread
    seen: list[dict[str, Any]] = field(default_factory=list)
    answered_for: dict[str, str] = field(default_factory=dict)
    gate: Gate = field(init=False)
    active: int = 0
    _previous: str = "nobody"

    def __post_init__(self) -> None:
        self.gate = Gate(self.lt)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.split("/")
        mode = parts[3] if len(parts) > 4 and parts[1:3] == ["v2", "models"] else "ok"
        body = await request.read()
        rid = request.headers.get(RID, "")
        self.seen.append({"mode": mode, "rid": rid, "headers": dict(request.headers), "body": body})
        self.active += 1
        try:
            return await self._answer(request, mode, rid, body)
        except ConnectionResetError:
            # The proxy gave up on this call (its deadline) and closed the connection: routine.
            return web.Response(status=499)
        finally:
            self.active -= 1

    async def _answer(
        self, request: web.Request, mode: str, rid: str, body: bytes
    ) -> web.StreamResponse:
        version = {"X-Model-Version": "2"}
        if mode == "hang":
            await self.gate.event.wait()
        if mode == "hangheaders":
            resp = web.StreamResponse(headers={"Content-Type": "application/json", **version})
            resp.content_length = 100
            await resp.prepare(request)
            await resp.write(b"{")
            await self.gate.event.wait()
            return resp
        if mode == "reset":
            return await _reset_after(request, 1000, b'{"outputs": [')
        if mode == "e500":
            return web.Response(status=500, text="internal error", headers=version)
        if mode == "garbage":
            return web.Response(body=b"\x00\xff not json {{{", headers=version)
        if mode == "deep":
            return web.Response(body=DEEP_BODY, content_type="application/json", headers=version)
        if mode == "longnumber":
            return web.Response(
                body=LONG_NUMBER_BODY, content_type="application/json", headers=version
            )
        if mode == "big":
            filler = b'{"outputs":[{"name":"y","shape":[1],"datatype":"FP32","data":[1]}],"pad":"'
            pad = BIG_BYTES - len(filler) - 2
            return web.Response(body=filler + b"x" * pad + b'"}', content_type="application/json")
        if mode == "swap":
            other, self._previous = self._previous, rid
            self.answered_for[rid] = other
            return web.Response(
                body=_oip("cand", 1.0, {"request_id": other}),
                content_type="application/json",
                headers={RID: other, **version},
            )
        if mode == "echo":
            return web.Response(
                body=_oip("cand", 1.0, {"headers": dict(request.headers)}),
                content_type="application/json",
                headers=version,
            )
        return web.Response(body=_oip("cand", float(len(body))), content_type="application/json", headers=version)  # fmt: skip


@dataclass
class FakeComparator:
    """``POST /v1/pairs`` that validates and records every pair (JSON or NDJSON batches)."""

    raw: list[bytes] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    posts: int = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/pairs", self._ingest)
        return app

    @property
    def request_ids(self) -> list[str]:
        return [p.request_id for p in self.pairs]

    def by_id(self) -> dict[str, Pair]:
        return {p.request_id: p for p in self.pairs}

    async def _ingest(self, request: web.Request) -> web.Response:
        self.posts += 1
        body = await request.read()
        if request.content_type == "application/json":
            batch = PairBatch.model_validate_json(body).pairs
        else:
            batch = [Pair.model_validate_json(ln) for ln in body.splitlines() if ln.strip()]
        self.raw.append(body)
        self.pairs.extend(batch)
        return web.json_response({"received": len(batch), "inserted": len(batch)})


@dataclass
class RawProduction:
    """A production that records raw bytes per connection and answers each request with ``ok``.

    It parses just enough HTTP/1.1 (Content-Length or chunked) to find request boundaries, and it
    records every request's header block: if the proxy ever forwarded an ambiguous request, the
    header block shows it (two Content-Lengths, or Content-Length beside Transfer-Encoding).
    """

    lt: LoopThread
    connections: list[bytearray] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    url: str = ""
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def start(self) -> str:
        async def go() -> str:
            self._server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
            port = self._server.sockets[0].getsockname()[1]
            return f"http://127.0.0.1:{port}"

        self.url = self.lt.run(go())
        return self.url

    def stop(self) -> None:
        async def go() -> None:
            if self._server is not None:
                self._server.close()
            for writer in self._writers:  # connections the proxy pooled stay open otherwise
                writer.close()
            await asyncio.sleep(0)

        self.lt.run(go())

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        log = bytearray()
        self.connections.append(log)
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                log += head
                text = head.decode("latin-1")
                self.heads.append(text)
                lines = text.split("\r\n")[1:]
                names = [ln.split(":", 1)[0].strip().lower() for ln in lines if ":" in ln]
                values = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip() for ln in lines if ":" in ln}  # fmt: skip
                if "chunked" in values.get("transfer-encoding", "").lower():
                    while True:
                        size_line = await reader.readuntil(b"\r\n")
                        log += size_line
                        size = int(size_line.split(b";")[0], 16)
                        chunk = await reader.readexactly(size + 2)
                        log += chunk
                        if size == 0:
                            break
                elif "content-length" in names:
                    log += await reader.readexactly(int(values["content-length"]))
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
                )
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            ValueError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            writer.close()
