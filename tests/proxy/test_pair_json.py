"""Pairs as the comparator reads them: every encoded line validates against the wire model."""

from __future__ import annotations

import json

from comparator.ingest import screen_body
from comparator.wire import Pair, PairBatch
from contract.outcomes import Outcome
from proxy.pair_json import encode_batch, encode_pair, join_batch
from proxy.pairing import CompletedPair, Side


def _pair(
    prod_body: bytes | None, cand_body: bytes | None, req: bytes | None = None
) -> CompletedPair:
    return CompletedPair(
        request_id="r1",
        ts=1_790_000_000.123,
        route="/v2/models/m/infer",
        request_sha256="0" * 64,
        request_body=req,
        prod=Side(Outcome.OK, status=200, latency_ms=3.14159, model_version="1", body=prod_body),
        candidate=Side(Outcome.TIMEOUT, latency_ms=250.0, error="deadline 250 ms", body=cand_body),
    )


def test_json_bodies_are_embedded_and_the_line_validates() -> None:
    line = encode_pair(
        _pair(b'{"outputs":[1]}', None, b'{"x":1}'), experiment="e1", max_body_bytes=1000
    )
    pair = Pair.model_validate_json(line)
    assert pair.prod.body == {"outputs": [1]} and pair.request.body == {"x": 1}
    assert pair.candidate.latency_ms == 250.0 and pair.candidate.body is None
    assert pair.ts.isoformat().startswith("2026-") and json.loads(line)["ts"].endswith("Z")


def test_non_json_nan_and_oversized_bodies_travel_as_their_size() -> None:
    for body in (
        b"\x00garbage",
        b'{"y": NaN}',
        b'{"big": "' + b"x" * 2000 + b'"}',
        # JSON that json.loads takes but the comparator's parser would refuse, taking the whole
        # batch with it if it were spliced in: UTF-16 text and a lone surrogate.
        '{"y": 1}'.encode("utf-16"),
        b'{"y": "\\ud800"}',
    ):
        pair = Pair.model_validate_json(
            encode_pair(_pair(body, b""), experiment="e", max_body_bytes=1000)
        )
        assert pair.prod.body is None and pair.prod.body_bytes == len(body)
        assert pair.candidate.body_bytes == 0


def test_bodies_are_spliced_as_sent_and_a_batch_validates() -> None:
    pretty = b'{\n  "outputs": [0.1, 0.2]\n}'
    batch = encode_batch(
        [_pair(pretty, b"[1,2]"), _pair(None, None)], experiment="e", max_body_bytes=1000
    )
    assert pretty in batch  # not re-serialised
    parsed = PairBatch.model_validate_json(batch)
    assert parsed.pairs[0].prod.body == {"outputs": [0.1, 0.2]} and parsed.pairs[
        0
    ].candidate.body == [1, 2]


def test_control_characters_and_quotes_in_a_field_cannot_break_the_document() -> None:
    pair = _pair(b'{"a":1}', None)
    pair.request_id = '\x00body\x00"}'
    doc = Pair.model_validate_json(encode_pair(pair, experiment="e", max_body_bytes=1000))
    # A NUL is no text a store keeps: it becomes U+FFFD, the replacement character.
    assert doc.request_id == '\ufffdbody\ufffd"}' and doc.prod.body == {"a": 1}


def test_byte_identical_bodies_are_checked_once_and_land_on_both_sides() -> None:
    same = b'{"outputs": [0.25, 0.75]}'
    pair = Pair.model_validate_json(
        encode_pair(_pair(same, same), experiment="e", max_body_bytes=1000)
    )
    assert pair.prod.body == pair.candidate.body == {"outputs": [0.25, 0.75]}
    bad = b'{"outputs": [0.25,'
    pair = Pair.model_validate_json(
        encode_pair(_pair(bad, bad, same), experiment="e", max_body_bytes=1000)
    )
    assert pair.prod.body is None and pair.candidate.body is None
    assert pair.prod.body_bytes == pair.candidate.body_bytes == len(bad)
    assert pair.request.body == {"outputs": [0.25, 0.75]}


def _clean(line: bytes) -> Pair:
    """The pair as the comparator screens it: stored, not refused."""
    screened = screen_body(b'{"pairs":[' + line + b"]}", "application/json")
    assert screened.refused == [] and len(screened.pairs) == 1
    return screened.pairs[0]


def test_what_the_proxy_saw_is_recorded_in_a_form_every_store_accepts() -> None:
    pair = _pair(b'{"outputs":[1]}', b'{"s":"a\\u0000b"}')
    pair.route = "/v2/models/a\x00b/infer"
    pair.prod.model_version = "1\x00"
    pair.candidate = Side(Outcome.OK, status=999, latency_ms=2.0, body=b"{}", error=None)
    doc = _clean(encode_pair(pair, experiment="e", max_body_bytes=1000))
    assert doc.route == "/v2/models/a\ufffdb/infer" and doc.prod.model_version == "1\ufffd"
    assert doc.candidate.outcome is Outcome.ERROR and doc.candidate.status is None
    assert doc.candidate.error == "protocol error: status 999"
    assert doc.repaired == ["route", "prod.model_version", "candidate.status"]


def test_a_percent_ff_path_and_a_status_from_either_side_are_recorded() -> None:
    pair = _pair(b'{"s":"x\\u0000"}', None)
    pair.route = "/v2/models/\udcff/infer"  # what %ff decodes to (surrogateescape)
    pair.prod = Side(Outcome.OK, status=42, latency_ms=1.0, error="odd")
    doc = _clean(encode_pair(pair, experiment="e", max_body_bytes=1000))
    assert doc.route == "/v2/models/\ufffd/infer"
    assert (doc.prod.outcome, doc.prod.error) == (Outcome.ERROR, "protocol error: status 42; odd")


def test_a_json_body_holding_a_nul_travels_as_its_size() -> None:
    body = b'{"text":"a\\u0000b"}'
    doc = _clean(encode_pair(_pair(body, None), experiment="e", max_body_bytes=1000))
    assert doc.prod.body is None and doc.prod.body_bytes == len(body)
    assert doc.repaired == ["prod.body"]


def test_a_request_body_holding_a_nul_travels_as_null_and_is_named() -> None:
    doc = _clean(
        encode_pair(_pair(b"{}", None, b'{"q":"\\u0000"}'), experiment="e", max_body_bytes=100)
    )
    assert doc.request.body is None and doc.repaired == ["request.body"]


def test_a_clean_pair_lists_no_repair() -> None:
    assert (
        _clean(encode_pair(_pair(b"{}", b"{}"), experiment="e", max_body_bytes=100)).repaired
        is None
    )


def test_a_batch_joins_any_number_of_pairs_into_one_document() -> None:
    for n in (0, 1, 2, 7):
        items = [b'{"i":%d}' % i for i in range(n)]
        assert json.loads(join_batch(items)) == {"pairs": [{"i": i} for i in range(n)]}
