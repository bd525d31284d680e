"""Which headers cross the proxy, in which direction.

RFC 9110 §7.6.1: hop-by-hop headers describe one connection, not the message, so a proxy removes
them — the fixed set below plus every header that the ``Connection`` header names. Everything else
(``Content-Encoding``, ``Content-Length``, ``ETag``, custom headers) is end-to-end and passes through
unchanged, which is what keeps gzip and chunked bodies byte-identical.

The candidate gets the same end-to-end headers minus the redacted ones (``authorization``,
``cookie``, ``x-api-key`` by default) and plus ``X-Shadow: 1``.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["HOP_BY_HOP", "candidate_headers", "end_to_end"]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


# Drop sets without a ``Connection`` header, by ``also_drop``: the common case costs no set building.
_FIXED_DROPS: dict[tuple[str, ...], frozenset[str]] = {}


def _dropped(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], extra: tuple[str, ...]
) -> frozenset[str]:
    fixed = _FIXED_DROPS.get(extra)
    if fixed is None:
        fixed = HOP_BY_HOP | {name.lower() for name in extra}
        if len(_FIXED_DROPS) < 64:
            _FIXED_DROPS[extra] = fixed
    connection = headers.get("Connection")
    if not connection:
        return fixed
    return fixed | {token.strip().lower() for token in connection.split(",")}


def end_to_end(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], *, also_drop: Iterable[str] = ()
) -> CIMultiDict[str]:
    """Copy ``headers`` without hop-by-hop ones (and ``also_drop``), keeping order and repeats."""
    out = CIMultiDict(headers)  # a C-level copy; removing a few names beats filtering every one
    for name in _dropped(headers, tuple(also_drop)):
        if name in out:
            out.popall(name)
    return out


def candidate_headers(
    forwarded: CIMultiDict[str], *, redact: frozenset[str], forward_auth: bool
) -> CIMultiDict[str]:
    """The headers sent to the candidate: production's request headers, redacted, marked."""
    out = (
        CIMultiDict(forwarded)
        if forward_auth
        else CIMultiDict((k, v) for k, v in forwarded.items() if k.lower() not in redact)
    )
    out["X-Shadow"] = "1"
    return out
