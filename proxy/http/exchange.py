"""What passes between an upstream connection and its callers: the request's bytes, the
answer's head, the callbacks an answer arrives through, and the connection's states."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.http.client import ClientConnection

__all__ = ["ConnectionState", "Owner", "ResponseHead", "Sink", "Upstream", "encode_request"]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def encode_request(
    method: str,
    target: bytes,
    host: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
    *,
    always_length: bool = False,
    length: int | None = None,
) -> bytes:
    """One HTTP/1.1 request as bytes. ``headers`` must hold no framing or hop-by-hop header.

    With ``length``, only the head is encoded, announcing a body of that many bytes that the
    caller sends after it.
    """
    parts = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if length is not None:
        parts.append(b"Content-Length: %d\r\n\r\n" % length)
        return b"".join(parts)
    if body or always_length or method in _BODY_METHODS:
        parts.append(b"Content-Length: %d\r\n" % len(body))
    parts += (b"\r\n", body)
    return b"".join(parts)


class ConnectionState(enum.Enum):
    IDLE = "idle"  # connected, nothing out, nothing buffered: may carry the next request
    ACTIVE = "active"  # a request is out and its answer not complete
    CLOSED = "closed"  # closing or closed: never used again


class ResponseHead:
    """The parsed head of an answer. ``lines[0]`` is empty; the rest are ``Name: value``."""

    __slots__ = ("chunked", "has_body", "length", "lines", "model_version", "reason", "status")

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.lines: list[bytes] = [b""]
        self.length: int | None = None  # the Content-Length, when there is one
        self.chunked = False
        self.has_body = True
        self.model_version: str | None = None


class Upstream(Protocol):
    """What an answer's sink may ask of the connection the answer comes on."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def detach(self) -> None: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """Receives one answer from a connection."""

    def head(self, conn: Upstream, head: ResponseHead) -> None: ...

    def data(self, conn: Upstream, chunk: bytes) -> None: ...

    def done(self, conn: Upstream) -> None: ...

    def fail(self, exc: Exception) -> None: ...


class Owner(Protocol):
    """The pool a connection reports to."""

    def release(self, conn: ClientConnection) -> None: ...

    def forget(self, conn: ClientConnection) -> None: ...
