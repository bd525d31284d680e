"""What the data port's server hands on and answers: requests, refusals, limits.

A :class:`Request` is one complete, parsed request. A :class:`Refusal` is a request the server will
not forward, as a frozen record in the same queue as requests, so it is answered in order like any
other (after the requests before it on the connection) and the connection closes after it.
:class:`Message` is the request being parsed: the per-message state, apart from the connection's.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote

from proxy.http.body import BodyStream

__all__ = ["Limits", "Message", "Refusal", "Request", "simple_response"]


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int
    keepalive_timeout_s: float  # idle, and the most time a client may take to send a head
    body_timeout_s: float  # the most time a client may take to send a body
    max_target_bytes: int = 16 * 1024
    max_head_bytes: int = 64 * 1024
    max_field_bytes: int = 16 * 1024  # one header line
    max_headers: int = 128
    # Across the port: connections at once, and request bytes held (bodies being read, queued or
    # being forwarded). Past either, a client gets a 503 instead of more of the proxy's memory.
    max_connections: int = 4096
    max_buffered_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request answered by the proxy itself with ``status``; the connection closes after it."""

    status: int
    text: str

    def response(self) -> bytes:
        return simple_response(self.status, self.text + "\n")


class Request:
    """One parsed request: raw header pairs and the body, whole or (when large) still arriving.

    A body over :data:`~proxy.http.body.STREAM_BODY_BYTES` comes as :attr:`stream`: read it whole
    with :meth:`read_body`, or forward it with what :meth:`unread_body` returns.
    """

    __slots__ = (
        "_whole",
        "body",
        "connection",
        "headers",
        "http11",
        "keep_alive",
        "method",
        "names",
        "stream",
        "target",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        http11: bool,
        keep_alive: bool,
        connection: bytes | None,
        stream: BodyStream | None = None,
        names: list[bytes] | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        # The header names in lower case, in the same order (the parser lowers them once).
        self.names = [name.lower() for name, _ in headers] if names is None else names
        self.body = body
        self.http11 = http11
        self.keep_alive = keep_alive
        self.connection = connection  # the Connection header's value, when there was one
        self.stream = stream
        self._whole = stream is None

    async def read_body(self) -> bytes:
        """The whole body (awaited only when it is still arriving)."""
        if not self._whole and self.stream is not None:
            self.body = await self.stream.read_all()
            self._whole = True
        return self.body

    def unread_body(self) -> BodyStream | None:
        """The body still to forward piece by piece, or ``None`` when :attr:`body` is whole."""
        return None if self._whole else self.stream

    @property
    def path(self) -> str:
        """The target's path, without the query, percent-decoded, as text."""
        path = self.target.split(b"?", 1)[0].decode("utf-8", "surrogateescape")
        return unquote(path, errors="surrogateescape") if "%" in path else path

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or ``None``."""
        try:
            return self.headers[self.names.index(name)][1]
        except ValueError:
            return None


class Message:
    """The request being parsed on a connection: its head so far and its body so far."""

    __slots__ = (
        "body",
        "body_size",
        "connection",
        "discarding",
        "fields_size",
        "headers",
        "in_head",
        "names",
        "stream",
        "target",
    )

    def __init__(self) -> None:
        self.in_head = True
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.names: list[bytes] = []  # the header names lowered, once the head is complete
        self.fields_size = 0
        self.connection: bytes | None = None
        self.body: list[bytes] = []
        self.body_size = 0
        self.discarding = False  # refused mid-message: read and drop the rest, then close
        self.stream: BodyStream | None = None  # the body, when it goes to the handler as it comes

    def take_body(self) -> bytes:
        body, self.body = self.body, []
        return body[0] if len(body) == 1 else b"".join(body)


def simple_response(status: int, text: str, *, close: bool = True) -> bytes:
    """A short plain-text response the proxy itself answers with (errors, 100-continue aside)."""
    body = text.encode()
    reason = HTTPStatus(status).phrase.encode()
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
        % (
            status,
            reason,
            len(body),
        )
    )
    return head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body
