"""The answer side of an upstream connection: llhttp's callbacks, one answer at a time.

:class:`AnswerParsing` is the part of :class:`~proxy.http.client.ClientConnection` that llhttp
calls back while it parses an answer: it builds the :class:`~proxy.http.exchange.ResponseHead`,
applies the checks llhttp does not make (a transfer coding other than chunked, ``Connection``
naming a framing header, control bytes in the reason phrase, an unasked ``101``), reads past
interim answers, drops trailers, and hands the head and the body to the request's sink.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httptools

from proxy.exceptions import UpstreamProtocolError
from proxy.http.exchange import ResponseHead, Sink

__all__ = ["MAX_HEAD", "NO_BODY", "TRAILING", "AnswerParsing"]

MAX_HEAD = 64 * 1024  # bytes of a response head (or of a trailer section), and of a head line

_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Names a ``Connection`` header may not list: dropping them as hop-by-hop would change the framing.
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_VERSIONS = frozenset({"1.0", "1.1"})  # what a status line may say
# The lengths of the header names the parser acts on, so most names are never lower-cased.
_NAME_LENGTHS = frozenset(
    len(n) for n in ("content-length", "transfer-encoding", "connection", "x-model-version")
)


class _Stop(Exception):
    """Raised inside a parser callback to stop llhttp; the connection reads it off the error."""


TRAILING = _Stop("bytes after the answer")
NO_BODY = _Stop("the answer to a HEAD request ends with its head")


class AnswerParsing:
    """llhttp's callbacks of an upstream connection (a mixin of it)."""

    _parser: httptools.HttpResponseParser
    _sink: Sink | None
    _head: ResponseHead
    _head_request: bool
    _reason: bytes
    _in_head: bool
    _head_size: int
    _read_size: int
    _heads: int
    _interim: bool
    _until_close: bool
    _keep: bool
    _complete: bool
    _quiet: int

    if TYPE_CHECKING:  # the connection's side (what makes it an ``Upstream`` for the sink)

        def pause_reading(self) -> None: ...

        def resume_reading(self) -> None: ...

        def detach(self) -> None: ...

        def close(self) -> None: ...

    def on_message_begin(self) -> None:
        if self._complete:
            raise TRAILING
        self._in_head = True
        self._head = ResponseHead()
        self._reason = b""
        self._head_size = 0
        self._quiet = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._quiet = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._quiet = 0
        if not self._in_head:
            return  # a trailer: read and dropped, never a header
        head = self._head
        head.lines.append(name + b": " + value)
        if len(name) not in _NAME_LENGTHS:
            return
        key = name.lower()
        if key == b"content-length":
            head.length = int(value)  # llhttp has checked it: digits, no second value
        elif key == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                raise UpstreamProtocolError("a transfer coding other than chunked")
            head.chunked = True
        elif key == b"connection":
            if any(token.strip().lower() in _FRAMING for token in value.split(b",")):
                raise UpstreamProtocolError("Connection names a framing header")
        elif key == b"x-model-version":
            head.model_version = value.strip().decode("latin-1")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._quiet = 0
        self._heads += 1
        parser = self._parser
        if parser.get_http_version() not in _VERSIONS:
            # llhttp takes "HTTP/2.0" and "HTTP/0.9" status lines; neither frames HTTP/1.1 bodies.
            raise UpstreamProtocolError(f"an HTTP/{parser.get_http_version()} status line")
        status = parser.get_status_code()
        reason = self._reason
        if reason != b"OK" and _CONTROL.search(reason):
            raise UpstreamProtocolError("a control byte in the reason phrase")
        if status < 200:
            if status == 101:
                raise UpstreamProtocolError("101 Switching Protocols nobody asked for")
            self._interim = True  # 100 Continue and the like: read past, never handed on
            return
        head = self._head
        # Only a head that came in more than MAX_HEAD bytes of reads can be too large.
        big = self._head_size + self._read_size > MAX_HEAD
        if big and sum(map(len, head.lines)) + len(reason) > MAX_HEAD:
            raise UpstreamProtocolError("response head too large")
        head.status = status
        head.reason = reason
        self._keep = parser.should_keep_alive()
        if self._head_request or status in (204, 304):
            # Bodiless by rule, whatever the head says: a server that sends a body anyway may
            # send it late, into the next exchange, so the connection is not reused.
            head.has_body = self._keep = False
        elif head.length == 0:
            head.has_body = False
        elif not head.chunked and head.length is None:
            self._until_close = True  # the body ends when the connection does
            self._keep = False
        if self._sink is not None:
            self._sink.head(self, head)
        if self._head_request:
            raise NO_BODY

    def on_body(self, body: bytes) -> None:
        self._quiet = 0
        if self._sink is not None:
            self._sink.data(self, body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True
