"""Hop-by-hop removal (RFC 9110 §7.6.1) and candidate redaction, on raw header bytes."""

from __future__ import annotations

from proxy.headers import candidate_lines, drop_set, request_lines, response_lines


def test_hop_by_hop_and_connection_named_headers_are_removed_from_responses() -> None:
    lines = [
        b"Connection: close, X-Private",
        b"Keep-Alive: 5",
        b"Transfer-Encoding: chunked",
        b"X-Private: 1",
        b"Set-Cookie: a=1",
        b"Set-Cookie: b=2",
        b"Content-Encoding: gzip",
    ]
    assert response_lines(lines, drop_set(())) == [
        b"Set-Cookie: a=1",
        b"Set-Cookie: b=2",
        b"Content-Encoding: gzip",
    ]


def test_candidate_headers_are_redacted_unless_told_otherwise() -> None:
    h = [(b"Authorization", b"x"), (b"COOKIE", b"y"), (b"X-Other", b"z")]
    redact = frozenset({b"authorization", b"cookie"})
    assert candidate_lines(h, redact=redact, forward_auth=False) == [
        (b"X-Other", b"z"),
        (b"X-Shadow", b"1"),
    ]
    assert (b"Authorization", b"x") in candidate_lines(h, redact=redact, forward_auth=True)


def test_request_lines_keep_order_case_and_repeats_and_drop_extras_in_any_case() -> None:
    h = [(b"HOST", b"a"), (b"x-b", b"1"), (b"Te", b"trailers"), (b"X-A", b"2"), (b"x-b", b"3"),
         (b"Connection", b"X-Gone"), (b"x-gone", b"4"), (b"UPGRADE", b"h2c")]  # fmt: skip
    assert request_lines(h, drop_set(("Host",), b"X-Gone")) == [
        (b"x-b", b"1"),
        (b"X-A", b"2"),
        (b"x-b", b"3"),
    ]
    # The drop set for a Connection header is per message, never remembered for the next one.
    assert request_lines([(b"X-Gone", b"5")], drop_set(())) == [(b"X-Gone", b"5")]
