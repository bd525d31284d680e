"""Which headers cross the proxy, in which direction — on raw bytes, as they came off the wire.

RFC 9110 §7.6.1: hop-by-hop headers describe one connection, not the message, so a proxy removes
them — the fixed set below plus every header that the ``Connection`` header names. Everything else
(``Content-Encoding``, ``Content-Length``, ``ETag``, custom headers) is end-to-end and passes through
unchanged, in order, with its case and its repeats, which is what keeps gzip and chunked bodies
byte-identical.

The candidate gets the same end-to-end headers minus the redacted ones (``authorization``,
``cookie``, ``x-api-key`` by default) and plus ``X-Shadow: 1``.
"""

from __future__ import annotations

from collections.abc import Iterable

from contract import SEGMENT_VALUE_MAX

__all__ = [
    "HOP_BY_HOP",
    "candidate_lines",
    "drop_set",
    "request_lines",
    "response_lines",
    "segment_header_values",
]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def drop_set(extra: Iterable[str | bytes], connection: bytes | None = None) -> frozenset[bytes]:
    """Hop-by-hop names, ``extra`` names, and the names a ``Connection`` header lists."""
    names = HOP_BY_HOP | {n.lower() if isinstance(n, bytes) else n.lower().encode() for n in extra}
    if connection:
        names |= {token.strip().lower() for token in connection.split(b",")}
    return names


def request_lines(
    headers: list[tuple[bytes, bytes]], drop: frozenset[bytes], names: list[bytes] | None = None
) -> list[tuple[bytes, bytes]]:
    """The request headers that go upstream: everything not in ``drop``, in order. ``names``:
    the headers' names lowered, when the caller has them."""
    if names is None:
        return [(name, value) for name, value in headers if name.lower() not in drop]
    return [line for line, name in zip(headers, names, strict=True) if name not in drop]


def candidate_lines(
    forwarded: list[tuple[bytes, bytes]], *, redact: frozenset[bytes], forward_auth: bool
) -> list[tuple[bytes, bytes]]:
    """The headers sent to the candidate: production's request headers, redacted, marked."""
    out = (
        list(forwarded)
        if forward_auth
        else [(name, value) for name, value in forwarded if name.lower() not in redact]
    )
    out.append((b"X-Shadow", b"1"))
    return out


def response_lines(lines: Iterable[bytes], drop: frozenset[bytes]) -> list[bytes]:
    """Production's response header lines (``Name: value``) without hop-by-hop ones and ``drop``."""
    kept: list[bytes] = []
    named: set[bytes] | None = None
    for line in lines:
        name = line.partition(b":")[0].lower()
        if name in drop:
            if name == b"connection":
                tokens = line.partition(b":")[2].split(b",")
                named = (named or set()) | {t.strip().lower() for t in tokens}
            continue
        kept.append(line)
    if named:
        kept = [line for line in kept if line.partition(b":")[0].lower() not in named]
    return kept


def segment_header_values(
    headers: list[tuple[bytes, bytes]], wanted: dict[bytes, str], max_chars: int = SEGMENT_VALUE_MAX
) -> dict[str, str] | None:
    """Segment values from request headers: ``wanted`` maps a lower-case header name to its
    dimension. The first occurrence counts, trimmed and cut to ``max_chars``; an empty or absent header gives no value. Bytes outside
    ASCII read as UTF-8 (what clients send today), an invalid sequence as U+FFFD."""
    out: dict[str, str] = {}
    for name, value in headers:
        dim = wanted.get(name.lower())
        if dim is not None and dim not in out:
            text = value.decode("utf-8", "replace").strip()[:max_chars]
            if text:
                out[dim] = text
    return out or None
