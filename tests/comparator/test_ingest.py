"""Parsing and validating ingest bodies (pure): JSON, NDJSON, error paths, the token check."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from comparator.exceptions import IngestError, InvalidPair, Unauthorized, UnparseableBody
from comparator.ingest import check_token, parse_body, validate_json_body, validate_pairs
from tests.comparator.store_support import make_pair


def test_json_body_gives_the_pairs() -> None:
    pairs = [make_pair(i, "e") for i in range(3)]
    items = parse_body(json.dumps({"pairs": pairs}).encode(), "application/json; charset=utf-8")
    assert [p.request_id for p in validate_pairs(items)] == [
        "req-000000",
        "req-000001",
        "req-000002",
    ]


def test_ndjson_body_gives_one_pair_per_line_skipping_blank_lines() -> None:
    lines = [json.dumps(make_pair(i, "e")) for i in range(3)]
    body = ("\n".join(lines[:2]) + "\n\n" + lines[2] + "\n").encode()
    assert len(validate_pairs(parse_body(body, "application/x-ndjson"))) == 3


def test_missing_content_type_reads_as_json() -> None:
    assert len(parse_body(json.dumps({"pairs": [make_pair(1, "e")]}).encode(), "")) == 1


@pytest.mark.parametrize(
    ("body", "ctype", "status", "message"),
    [
        (b"{not json", "application/json", 400, "body is not JSON"),
        (b"\xff\xfe", "application/json", 400, "body is not JSON"),
        (b'{"a": 1}\n{oops', "application/x-ndjson", 400, "line 2: not JSON"),
        (b"[1, 2]", "application/json", 400, "pairs: expected an object"),
        (b'{"pairs": {}}', "application/json", 400, "pairs: expected a list"),
        (b'{"pairs": [], "x": 1}', "application/json", 400, "x: unexpected key"),
        (b"<xml/>", "text/xml", 415, "Content-Type 'text/xml' not supported"),
    ],
)
def test_unparseable_bodies_are_refused_with_a_reason(
    body: bytes, ctype: str, status: int, message: str
) -> None:
    with pytest.raises(IngestError, match=message) as info:
        parse_body(body, ctype)
    assert info.value.status == status


def test_a_malformed_pair_is_named_by_index_and_field() -> None:
    items = [make_pair(i, "e") for i in range(5)]
    items[3]["candidate"]["latency_ms"] = -1
    with pytest.raises(InvalidPair, match=r"^pairs\[3\]\.candidate\.latency_ms: ") as info:
        validate_pairs(items)
    assert info.value.status == 422


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d.pop("request_id"), "pairs[0].request_id"),
        (lambda d: d.update(ts="2026-11-22T10:00:00"), "pairs[0].ts"),
        (lambda d: d.update(experiment="bad name!"), "pairs[0].experiment"),
        (lambda d: d["prod"].update(outcome="maybe"), "pairs[0].prod.outcome"),
        (lambda d: d["prod"].update(status=99), "pairs[0].prod.status"),
        (lambda d: d.update(extra=1), "pairs[0].extra"),
        (lambda d: d["request"].update(sha256="xyz"), "pairs[0].request.sha256"),
        (lambda d: d.update(v=2), "pairs[0].v"),
    ],
)
def test_each_kind_of_bad_field_is_named(mutate: Any, where: str) -> None:
    d = make_pair(0, "e")
    mutate(d)
    with pytest.raises(InvalidPair, match="^" + re.escape(where) + ": "):
        validate_pairs([d])


def test_an_empty_batch_is_refused() -> None:
    with pytest.raises(InvalidPair, match="empty"):
        validate_pairs([])


def test_an_oversized_batch_is_refused() -> None:
    with pytest.raises(InvalidPair, match="at most 10000"):
        validate_pairs([{}] * 10_001)


def test_token_check() -> None:
    token = SecretStr("s3cret")
    check_token("Bearer s3cret", token)
    check_token("bearer s3cret", token)
    check_token(None, None)  # no token configured: open
    for header in (None, "", "Bearer", "Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret"):
        with pytest.raises(Unauthorized):
            check_token(header, token)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_with_an_ingest_error_never_a_crash(body: bytes) -> None:
    for ctype in ("application/json", "application/x-ndjson"):
        try:
            validate_pairs(parse_body(body, ctype))
        except IngestError as exc:
            assert 400 <= exc.status < 500
        else:  # pragma: no cover - random bytes that form a valid pair are not expected
            pytest.fail("random bytes accepted")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["request_id", "ts", "prod", "candidate", "request", "route", "v"]), json_values
)
def test_any_wrong_value_of_a_field_is_a_422_naming_the_field(field: str, value: Any) -> None:
    d = make_pair(0, "e")
    d[field] = value
    try:
        validate_pairs([d])
    except InvalidPair as exc:
        assert str(exc).startswith(f"pairs[0].{field}")
    except UnparseableBody:  # pragma: no cover
        pytest.fail("validation raised a parse error")


def test_one_pass_json_validation_agrees_with_the_two_step_path() -> None:
    good = json.dumps({"pairs": [make_pair(i, "e") for i in range(3)]}).encode()
    assert validate_json_body(good) == validate_pairs(parse_body(good, "application/json"))
    bad = [make_pair(i, "e") for i in range(3)]
    bad[2]["prod"]["status"] = 700
    with pytest.raises(InvalidPair, match=r"^pairs\[2\]\.prod\.status: "):
        validate_json_body(json.dumps({"pairs": bad}).encode())
    with pytest.raises(UnparseableBody, match="not JSON"):
        validate_json_body(b'{"pairs": [')
    with pytest.raises(UnparseableBody, match="pairs: expected an object"):
        validate_json_body(b"[]")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_one_pass_json_validation_refuses_arbitrary_bytes_with_a_4xx(body: bytes) -> None:
    with pytest.raises(IngestError):
        validate_json_body(body)
