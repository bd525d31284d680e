"""Raw-socket HTTP/1.1 for tests where framing matters: a scripted upstream and a strict client.

:class:`RawUpstream` listens on 127.0.0.1 port 0, reads each request exactly as it arrives (and
records its bytes), asks a ``respond`` callable for a :class:`Reply`, and writes that reply with
whatever framing it names: ``Content-Length``, chunked (optionally with chunk extensions and
trailers), close-delimited, or no body (HEAD, 204, 304), after any interim 1xx heads, in slow
drips, cut off mid-body, followed by stray bytes, or not at all (the connection closes unanswered).

:class:`RawClient` is the other end: it writes requests as given and parses responses strictly
(status line, header syntax, ``Content-Length`` and ``Transfer-Encoding`` together refused, exact
chunk sizes), recording interim 1xx heads and trailers, so two runs of the same exchange can be
compared byte for byte. Every read is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Header",
    "Interim",
    "Malformed",
    "NoResponse",
    "RawClient",
    "RawUpstream",
    "RecordedRequest",
    "Reply",
    "Response",
    "Truncated",
    "encode_request",
]

Header = tuple[bytes, bytes]
Framing = Literal["length", "chunked", "close", "none"]

MAX_HEAD = 64 * 1024
PIECE = 32 * 1024  # what a slow reader reads between pauses
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEX = re.compile(rb"^[0-9A-Fa-f]{1,16}$")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


# --- the upstream's script ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interim:
    """A 1xx head sent before the final answer."""

    status: int = 103
    reason: bytes = b"Early Hints"
    headers: tuple[Header, ...] = ()


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer.

    ``framing`` is how the body is delimited; for ``"none"`` (204, 304) no framing header and no
    body are sent. A HEAD request gets the head only, framing headers included. ``cut_at`` closes
    the connection after that many bytes of the *encoded* body. ``after`` is written in the same
    write as the answer, or ``after_delay_s`` after it: bytes no well-behaved server sends. ``raw``
    replaces the whole answer with exact bytes (malformed answers); the connection then closes.
    ``drop`` closes the connection without answering.
    """

    status: int = 200
    reason: bytes = b"OK"
    headers: tuple[Header, ...] = ()
    body: bytes = b""
    framing: Framing = "length"
    chunk_size: int = 64 * 1024
    chunk_ext: bool = False
    trailers: tuple[Header, ...] = ()
    interim: tuple[Interim, ...] = ()
    close: bool = False  # send "Connection: close" and close after the answer
    drip: int = 0  # write the answer in this many pieces, pausing between them
    drip_delay_s: float = 0.002
    cut_at: int | None = None
    after: bytes = b""
    after_delay_s: float = 0.0
    raw: bytes | None = None
    drop: bool = False

    def head_bytes(self) -> bytes:
        lines = [b"HTTP/1.1 %d %s" % (self.status, self.reason)]
        lines += [name + b": " + value for name, value in self.headers]
        if self.framing == "length":
            lines.append(b"Content-Length: %d" % len(self.body))
        elif self.framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
            if self.trailers:
                lines.append(b"Trailer: " + b", ".join(name for name, _ in self.trailers))
        if self.close or self.framing == "close":
            lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def body_bytes(self) -> bytes:
        """The body as it goes on the wire (chunked when the framing says so)."""
        if self.framing == "none":
            return b""
        if self.framing != "chunked":
            return self.body
        out = []
        size = max(1, self.chunk_size)
        for n, i in enumerate(range(0, len(self.body), size)):
            piece = self.body[i : i + size]
            ext = b';ext%d="v"' % n if self.chunk_ext else b""
            out.append(b"%x%s\r\n%s\r\n" % (len(piece), ext, piece))
        out.append(b"0;last\r\n" if self.chunk_ext else b"0\r\n")
        out += [name + b": " + value + b"\r\n" for name, value in self.trailers]
        out.append(b"\r\n")
        return b"".join(out)

    def wire(self, head_request: bool) -> bytes:
        """Everything the upstream writes for this answer (interim heads included)."""
        if self.raw is not None:
            return self.raw
        interim = b"".join(
            b"HTTP/1.1 %d %s\r\n" % (i.status, i.reason)
            + b"".join(n + b": " + v + b"\r\n" for n, v in i.headers)
            + b"\r\n"
            for i in self.interim
        )
        body = b"" if head_request else self.body_bytes()
        if self.cut_at is not None:
            body = body[: self.cut_at]
        return interim + self.head_bytes() + body

    @property
    def closes(self) -> bool:
        """Whether the upstream closes the connection after this answer."""
        return (
            self.close
            or self.framing == "close"
            or self.cut_at is not None
            or self.raw is not None
            or self.drop
        )


# --- requests as the upstream saw them ------------------------------------------------------------


@dataclass(slots=True)
class RecordedRequest:
    """One request exactly as it arrived: its bytes, and what they say."""

    conn_id: int
    raw: bytes
    method: str
    target: bytes
    version: bytes
    headers: list[Header]
    body: bytes  # decoded (chunked framing removed)
    chunked: bool
    trailers: list[Header] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class Malformed(Exception):
    """Bytes that are not a well-formed HTTP/1.1 message."""


def _parse_fields(lines: list[bytes]) -> list[Header]:
    headers: list[Header] = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise Malformed(f"bad header line {line[:60]!r}")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise Malformed(f"control byte in the value of {name!r}")
        headers.append((name, value))
    return headers


def _framing_of(headers: list[Header]) -> tuple[int | None, bool]:
    """``(Content-Length, chunked)`` from header fields, refusing ambiguous framing."""
    lengths = [v for n, v in headers if n.lower() == b"content-length"]
    codings = [v for n, v in headers if n.lower() == b"transfer-encoding"]
    if lengths and codings:
        raise Malformed("Content-Length together with Transfer-Encoding")
    if codings:
        if len(codings) != 1 or codings[0].lower() != b"chunked":
            raise Malformed(f"unsupported Transfer-Encoding {codings!r}")
        return None, True
    if lengths:
        if len(set(lengths)) != 1 or not lengths[0].isdigit():
            raise Malformed(f"bad Content-Length {lengths!r}")
        return int(lengths[0]), False
    return None, False


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise Malformed("head too large") from exc


async def _read_chunked(
    reader: asyncio.StreamReader, raw: bytearray, body: bytearray, pace_s: float = 0.0
) -> tuple[list[Header], bool]:
    """A chunked body into ``body``: ``(trailers, saw_extensions)``; wire bytes go into ``raw``."""
    ext_seen = False
    while True:
        line = await reader.readuntil(b"\r\n")
        raw += line
        size_text, semi, _ = line[:-2].partition(b";")
        ext_seen = ext_seen or bool(semi)
        if not _HEX.match(size_text):
            raise Malformed(f"bad chunk size {line[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        try:
            data = await reader.readexactly(size + 2)
        except asyncio.IncompleteReadError as exc:
            body += exc.partial[:size]
            raise
        raw += data
        if data[-2:] != b"\r\n":
            raise Malformed("chunk not followed by CRLF")
        body += data[:-2]
        if pace_s:
            await asyncio.sleep(pace_s)
    trailer_lines = []
    while True:
        line = await reader.readuntil(b"\r\n")
        raw += line
        if line == b"\r\n":
            break
        trailer_lines.append(line[:-2])
    return _parse_fields(trailer_lines), ext_seen


async def read_request(
    reader: asyncio.StreamReader, conn_id: int, on_head: Callable[[], None] | None = None
) -> RecordedRequest | None:
    """The next request on a connection, or ``None`` at a clean end of the stream.
    ``on_head`` is called once the head is in and the body (if any) is still to come."""
    try:
        head = await _read_head(reader)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise Malformed("connection closed inside a request head") from exc
        return None
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise Malformed(f"bad request line {lines[0][:80]!r}")
    headers = _parse_fields(lines[1:])
    length, chunked = _framing_of(headers)
    if on_head is not None:
        on_head()
    raw = bytearray(head)
    trailers: list[Header] = []
    if chunked:
        decoded = bytearray()
        trailers, _ = await _read_chunked(reader, raw, decoded)
        body = bytes(decoded)
    elif length:
        body = await reader.readexactly(length)
        raw += body
    else:
        body = b""
    return RecordedRequest(
        conn_id,
        bytes(raw),
        parts[0].decode("ascii", "replace"),
        parts[1],
        parts[2],
        headers,
        body,
        chunked,
        trailers,
    )


class RawUpstream:
    """A scripted HTTP/1.1 server on 127.0.0.1: one :class:`Reply` per request, from ``respond``.

    ``requests`` lists every request received, in arrival order. Each connection's handler is
    bounded: it waits at most ``idle_s`` for a request and closes at :meth:`close`.
    """

    def __init__(self, respond: Callable[[RecordedRequest], Reply], idle_s: float = 30.0) -> None:
        self.respond = respond
        self.idle_s = idle_s
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []
        self.connections = 0
        # Connections whose current request has its head in but not all of its body: a request
        # half-sent by whoever is on the other side.
        self.mid_request = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=MAX_HEAD)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:  # aborted, each handler ends at its next read or write
            await asyncio.wait(set(self._tasks), timeout=1)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> RawUpstream:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        conn_id = self.connections
        in_body = False

        def head_in() -> None:
            nonlocal in_body
            in_body = True
            self.mid_request += 1

        try:
            while True:
                async with asyncio.timeout(self.idle_s):
                    request = await read_request(reader, conn_id, head_in)
                if request is None:
                    break
                in_body = False
                self.mid_request -= 1
                self.requests.append(request)
                reply = self.respond(request)
                if reply.drop:
                    break
                await self._write(writer, reply, request.method == "HEAD")
                if reply.closes:
                    break
        except (Malformed, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.errors.append(f"connection {conn_id}: {exc!r}")
        except (OSError, TimeoutError, RuntimeError):
            # The peer went away or stayed silent (uvloop raises RuntimeError for a write on a
            # transport closed meanwhile): the connection simply ends.
            pass
        except asyncio.CancelledError:
            pass  # close() ends a handler still sleeping in a drip; nobody awaits it
        finally:
            if in_body:
                self.mid_request -= 1
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, reply: Reply, head_request: bool) -> None:
        data = reply.wire(head_request)
        if reply.after and not reply.after_delay_s:
            data += reply.after  # in the same write: one segment on loopback
        pieces = max(1, reply.drip)
        step = -(-len(data) // pieces) if data else 1
        for i in range(0, len(data), step):
            if i:
                await asyncio.sleep(reply.drip_delay_s)
                if writer.transport.is_closing():
                    return  # the peer went away, or close() ended the connection
            writer.write(data[i : i + step])
            await writer.drain()
        if reply.after and reply.after_delay_s:
            await asyncio.sleep(reply.after_delay_s)
            if writer.transport.is_closing():
                return
            writer.write(reply.after)
            await writer.drain()


# --- the client ---------------------------------------------------------------------------------


def encode_request(
    method: str,
    target: bytes,
    host: bytes,
    headers: list[Header],
    body: bytes,
    *,
    chunked: bool = False,
    chunk_size: int = 8192,
    version: bytes = b"HTTP/1.1",
    trailers: tuple[Header, ...] = (),
) -> bytes:
    """A request as bytes, with ``Content-Length`` (when there is a body) or chunked framing
    (with ``trailers`` after the last chunk)."""
    parts = [method.encode("ascii"), b" ", target, b" ", version, b"\r\nHost: ", host, b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), chunk_size):
            piece = body[i : i + chunk_size]
            parts.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        parts.append(b"0\r\n")
        parts += [name + b": " + value + b"\r\n" for name, value in trailers]
        parts.append(b"\r\n")
    else:
        if body or method in ("POST", "PUT", "PATCH"):
            parts.append(b"Content-Length: %d\r\n" % len(body))
        parts += (b"\r\n", body)
    return b"".join(parts)


@dataclass(slots=True)
class Response:
    """One response as a client saw it."""

    status: int
    reason: bytes
    headers: list[Header]
    body: bytes
    framing: Framing
    interim: list[tuple[int, list[Header]]] = field(default_factory=list)
    trailers: list[Header] = field(default_factory=list)
    keep_alive: bool = True  # whether the next request may follow on this connection

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class Truncated(Exception):
    """The connection ended inside a response; ``partial`` holds what had arrived."""

    def __init__(self, partial: Response | None, why: str) -> None:
        super().__init__(why)
        self.partial = partial


class NoResponse(Exception):
    """The connection ended (cleanly) before any byte of a response."""


class RawClient:
    """One client connection to ``host:port``, reading responses strictly and within a bound."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        # A slow reader: bodies are read in pieces with this pause between them, so the
        # server's writes back up (its flow control is under test).
        self.pace_s = 0.0

    @classmethod
    async def connect(cls, port: int, limit_s: float = 5.0) -> RawClient:
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=MAX_HEAD)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        """Write ``data``; ``ConnectionResetError`` once the server has closed the connection."""
        if self.writer.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        try:
            self.writer.write(data)
        except RuntimeError as exc:  # uvloop: a write on a transport closed meanwhile
            raise ConnectionResetError(str(exc)) from exc
        await self.writer.drain()

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2):
                await self.writer.wait_closed()

    async def _read_exactly(self, n: int, into: bytearray) -> None:
        """``n`` bytes into ``into``: in pieces with pauses for a slow reader."""
        if not self.pace_s:
            into += await self.reader.readexactly(n)
            return
        while n:
            piece = await self.reader.readexactly(min(n, PIECE))
            into += piece
            n -= len(piece)
            await asyncio.sleep(self.pace_s)

    async def read_response(self, method: str, limit_s: float = 5.0) -> Response:
        """The next response (after any 1xx heads). Raises :class:`NoResponse`,
        :class:`Truncated`, :class:`Malformed`, or ``TimeoutError`` after ``limit_s``."""
        async with asyncio.timeout(limit_s):
            return await self._read_response(method)

    async def _read_response(self, method: str) -> Response:
        reader = self.reader
        interim: list[tuple[int, list[Header]]] = []
        while True:
            try:
                head = await _read_head(reader)
            except asyncio.IncompleteReadError as exc:
                if not exc.partial and not interim:
                    raise NoResponse("connection closed before a response") from exc
                raise Truncated(None, f"closed inside a head: {exc.partial[:60]!r}") from exc
            lines = head[:-4].split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if (
                len(parts) < 2
                or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0")
                or not parts[1].isdigit()
                or len(parts[1]) != 3
            ):
                raise Malformed(f"bad status line {lines[0][:80]!r}")
            reason = parts[2] if len(parts) > 2 else b""
            if _BAD_VALUE.search(reason):
                raise Malformed("control byte in the reason phrase")
            status = int(parts[1])
            headers = _parse_fields(lines[1:])
            if 100 <= status < 200:
                if status == 101:
                    raise Malformed("101 Switching Protocols was not asked for")
                interim.append((status, headers))
                continue
            break
        length, chunked = _framing_of(headers)
        connection = b",".join(v for n, v in headers if n.lower() == b"connection").lower()
        named = {token.strip() for token in connection.split(b",")}
        if named & {b"content-length", b"transfer-encoding"}:
            raise Malformed("Connection names a framing header (a proxy would drop the framing)")
        keep = parts[0] == b"HTTP/1.1" and b"close" not in connection
        if parts[0] == b"HTTP/1.0" and b"keep-alive" in connection:
            keep = True
        resp = Response(status, reason, headers, b"", "length", interim, keep_alive=keep)
        if method == "HEAD" or status in (204, 304):
            resp.framing = "none"
            return resp
        decoded = bytearray()
        try:
            if chunked:
                resp.framing = "chunked"
                resp.trailers, _ = await _read_chunked(reader, bytearray(), decoded, self.pace_s)
            elif length is not None:
                await self._read_exactly(length, decoded)
            else:
                resp.framing = "close"
                resp.keep_alive = False
                while piece := await reader.read(PIECE):
                    decoded += piece
                    if self.pace_s:
                        await asyncio.sleep(self.pace_s)
        except asyncio.IncompleteReadError as exc:
            if length is not None:
                decoded += exc.partial
            resp.body = bytes(decoded)
            raise Truncated(resp, "closed inside a body") from exc
        except (ConnectionError, OSError) as exc:
            resp.body = bytes(decoded)
            raise Truncated(resp, f"connection broke inside a body: {exc!r}") from exc
        resp.body = bytes(decoded)
        return resp
