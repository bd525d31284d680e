"""A lean HTTP/1.1 client for the candidate: one write per request, a small parser, its own pool.

The candidate path is pure overhead for the client, so it gets a client that does only what a
shadow call needs: send the request in one ``write``, read the status, the ``X-Model-Version``
header and the whole body (``Content-Length``, chunked, or until close), and keep the connection
for the next call. It shares nothing with production's pool.

**Lingering instead of churning.** When the tee's deadline passes, the call's *outcome* is a
timeout at once, but the connection is not torn down: it stays open for up to ``linger_s`` so a
late answer can drain and the connection be reused. Closing it would cost a new TCP handshake per
teed request exactly when the candidate is slow. Lingering connections count towards the tee's
in-flight bound, so a hung candidate fills the bound and further tees are shed — the cheapest
thing the proxy can do — instead of opening a connection per request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["CandidateClient", "CandidateResponse", "UpstreamProtocolError"]

_MAX_HEAD = 64 * 1024
_DROP = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})


class UpstreamProtocolError(ConnectionError):
    """The candidate sent something that is not a well-formed HTTP/1.1 response."""


@dataclass(frozen=True, slots=True)
class CandidateResponse:
    status: int
    model_version: str | None
    body: bytes  # empty when the body was larger than the client's keep_bytes
    size: int  # bytes of body received, kept or not
    truncated: bool = False


class _Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request on it at a time."""

    def __init__(self, client: CandidateClient) -> None:
        self._client = client
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[CandidateResponse] | None = None
        self._head_request = False
        self._state = "idle"  # idle | head | length | chunk_size | chunk_data | trailers | eof
        self._remaining = 0
        self._chunks: list[bytes] = []
        self._size = 0  # body bytes received for the current response
        self._truncated = False
        self._status = 0
        self._version: str | None = None
        self.reusable = True
        self.got_bytes = False
        self.lingering: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self._buf += data
        try:
            self._parse()
        except (ValueError, UpstreamProtocolError) as exc:
            self._fail(UpstreamProtocolError(f"bad response from candidate: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost finishes the work

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._state == "eof":
            self._take(len(self._buf))
            self._complete()
        elif self._state != "idle":
            self._fail(ConnectionResetError("candidate closed the connection"))
        self._client._forget(self)

    # --- requests -----------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._state != "idle"

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def send(self, data: bytes, head_request: bool) -> asyncio.Future[CandidateResponse]:
        assert self.transport is not None and self._state == "idle"
        self._waiter = asyncio.get_running_loop().create_future()
        self._head_request = head_request
        self._state = "head"
        self._chunks = []
        self._size = 0
        self._truncated = False
        self.got_bytes = False
        self.transport.write(data)
        return self._waiter

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        waiter, self._waiter = self._waiter, None
        self._state = "idle"
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def _complete(self) -> None:
        body = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks = []
        self._state = "idle"
        if self._buf:  # bytes past the response: the framing cannot be trusted any more
            self.reusable = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(
                CandidateResponse(self._status, self._version, body, self._size, self._truncated)
            )
        self._client._release(self)

    def _parse(self) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise UpstreamProtocolError("response head too large")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                if not self._start_body(head):
                    continue  # an interim 1xx response: read the next head
                if self._state == "idle":
                    self._complete()
                    return
            elif state == "length":
                self._remaining -= self._take(min(len(buf), self._remaining))
                if self._remaining:
                    return
                self._complete()
                return
            elif state == "chunk_size":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0].strip(), 16)
                del buf[: end + 2]
                self._remaining = size
                self._state = "chunk_data" if size else "trailers"
            elif state == "chunk_data":
                self._remaining -= self._take(min(len(buf), self._remaining))
                if self._remaining:
                    return
                self._state = "chunk_end"
            elif state == "chunk_end":
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise UpstreamProtocolError("chunk not followed by CRLF")
                del buf[:2]
                self._state = "chunk_size"
            elif state == "trailers":
                if buf[:2] == b"\r\n":
                    del buf[:2]
                else:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        return
                    del buf[: end + 4]
                self._complete()
                return
            else:  # "eof" (body until close) or "idle" (unexpected bytes)
                if state == "idle" and buf:
                    raise UpstreamProtocolError("data without a request")
                self._take(len(buf))
                return

    def _take(self, n: int) -> int:
        """Consume ``n`` body bytes from the buffer: kept up to ``keep_bytes``, always counted.

        A body past ``keep_bytes`` is still read to its end (so the latency is the whole answer's
        and the connection can be reused) but not held: memory per call stays bounded.
        """
        if n == 0:
            return 0
        self._size += n
        if self._size > self._client.max_body_bytes:
            raise UpstreamProtocolError("response body too large")
        if self._truncated:
            pass
        elif self._size > self._client.keep_bytes:
            self._truncated = True
            self._chunks = []
        else:
            self._chunks.append(bytes(self._buf[:n]))
        del self._buf[:n]
        return n

    def _start_body(self, head: bytes) -> bool:
        """Parse a response head and choose the body framing; ``False`` for a 1xx response."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise UpstreamProtocolError("not an HTTP/1.x status line")
        status = int(parts[1])
        if 100 <= status < 200:
            return False
        self._status = status
        self._version = None
        length: int | None = None
        chunked = False
        keep_alive = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value.strip())
            elif key == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif key == b"connection":
                token = value.strip().lower()
                keep_alive = token != b"close" and (keep_alive or token == b"keep-alive")
            elif key == b"x-model-version":
                self._version = value.strip().decode("latin-1")
        self.reusable = self.reusable and keep_alive
        if self._head_request or status in (204, 304):
            self._state = "idle"
        elif chunked:
            self._state = "chunk_size"
        elif length is not None:
            if length > self._client.max_body_bytes:
                raise UpstreamProtocolError("response body too large")
            self._remaining = length
            self._state = "length" if length else "idle"
        else:
            self.reusable = False
            self._state = "eof"
        return True


class CandidateClient:
    """Keep-alive connections to one candidate base URL (``http://host:port[/prefix]``)."""

    def __init__(
        self,
        base_url: str,
        *,
        linger_s: float,
        max_body_bytes: int = 64 * 1024 * 1024,
        keep_bytes: int = 1024 * 1024,
    ):
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the candidate client speaks plain http://, got {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self._host_header = parts.netloc.encode()
        self.max_body_bytes = max_body_bytes
        self.keep_bytes = keep_bytes
        self._linger_s = linger_s
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self.lingering = 0

    @property
    def open_connections(self) -> int:
        return len(self._all)

    def _encode(
        self, method: str, path_qs: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> bytes:
        lines = [f"{method} {self._prefix}{path_qs} HTTP/1.1".encode("utf-8", "surrogateescape")]
        lines.append(b"Host: " + self._host_header)
        for name, value in headers:
            if name.lower() not in _DROP:
                lines.append(f"{name}: {value}".encode("utf-8", "surrogateescape"))
        lines.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Conn(self), self._host, self._port)
        self._all.add(conn)
        return conn

    async def request(
        self, method: str, path_qs: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> CandidateResponse:
        """Send one request and return the whole response; the caller sets the deadline."""
        data = self._encode(method, path_qs, headers, body)
        head = method == "HEAD"
        reused = None
        while self._idle:
            conn = self._idle.pop()
            if not conn.closing:
                reused = conn
                break
        if reused is not None:
            try:
                return await self._exchange(reused, data, head)
            except ConnectionError:
                # A keep-alive connection the server had already closed: retry once on a fresh one.
                if reused.got_bytes:
                    raise
        return await self._exchange(await self._connect(), data, head)

    async def _exchange(self, conn: _Conn, data: bytes, head: bool) -> CandidateResponse:
        try:
            return await conn.send(data, head)
        except asyncio.CancelledError:
            self._linger(conn)
            raise

    def _linger(self, conn: _Conn) -> None:
        """The caller gave up (deadline or shutdown): let the answer drain, then reuse or close."""
        if not conn.busy or conn.closing or conn.lingering is not None:
            return
        self.lingering += 1
        loop = asyncio.get_running_loop()
        conn.lingering = loop.call_later(self._linger_s, conn.abort)

    def _stop_lingering(self, conn: _Conn) -> None:
        if conn.lingering is not None:
            conn.lingering.cancel()
            conn.lingering = None
            self.lingering -= 1

    def _release(self, conn: _Conn) -> None:
        self._stop_lingering(conn)
        if conn.reusable and not conn.closing:
            self._idle.append(conn)
        else:
            conn.abort()

    def _forget(self, conn: _Conn) -> None:
        self._stop_lingering(conn)
        self._all.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    async def close(self) -> None:
        """Abort every connection (idle, busy or lingering)."""
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()
        # Let connection_lost callbacks run so transports are closed before the loop ends.
        for _ in range(3):
            if not self._all:
                break
            await asyncio.sleep(0)
