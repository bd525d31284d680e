"""Hop-by-hop removal (RFC 9110 §7.6.1) and candidate redaction."""

from __future__ import annotations

from multidict import CIMultiDict

from proxy.headers import candidate_headers, end_to_end


def test_hop_by_hop_and_connection_named_headers_are_removed() -> None:
    h = CIMultiDict(
        [("Connection", "close, X-Private"), ("Keep-Alive", "5"), ("Transfer-Encoding", "chunked"),
         ("X-Private", "1"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Encoding", "gzip")]
    )  # fmt: skip
    out = end_to_end(h)
    assert list(out.items()) == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Encoding", "gzip"),
    ]


def test_candidate_headers_are_redacted_unless_told_otherwise() -> None:
    h = CIMultiDict([("Authorization", "x"), ("COOKIE", "y"), ("X-Other", "z")])
    redact = frozenset({"authorization", "cookie"})
    assert dict(candidate_headers(h, redact=redact, forward_auth=False)) == {
        "X-Other": "z",
        "X-Shadow": "1",
    }
    assert "Authorization" in candidate_headers(h, redact=redact, forward_auth=True)


def test_end_to_end_keeps_order_case_and_repeats_and_drops_extras_in_any_case() -> None:
    h = CIMultiDict(
        [("HOST", "a"), ("x-b", "1"), ("Te", "trailers"), ("X-A", "2"), ("x-b", "3"),
         ("Connection", "X-Gone"), ("x-gone", "4"), ("UPGRADE", "h2c")]
    )  # fmt: skip
    assert list(end_to_end(h, also_drop=("Host",)).items()) == [
        ("x-b", "1"),
        ("X-A", "2"),
        ("x-b", "3"),
    ]
    # The drop set for a Connection header is per message, never remembered for the next one.
    assert list(end_to_end(CIMultiDict([("X-Gone", "5")])).items()) == [("X-Gone", "5")]
