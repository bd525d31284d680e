"""Segment values from the proxy to the comparator: extraction (route, JSON pointers into the
request), the pairing buffer, the encoder and the wire model; older pairs without them."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from comparator.wire import Pair
from contract.outcomes import Outcome
from proxy.pair_json import SEGMENT_VALUE_MAX, encode_pair, segment_extractor
from proxy.pairing import PairingBuffer, Side
from proxy.settings import ProxySettings


def _emitted(body: bytes, extract: object) -> Pair:
    out = []
    buf = PairingBuffer(
        max_pairs=10,
        on_emit=out.append,
        candidate_deadline_ms=250.0,
        segments=extract,  # type: ignore[arg-type]
    )
    assert buf.open("r1", ts=1_790_000_000.0, route="/v2/models/m/infer", body=body, deadline=9.0)
    buf.set_prod("r1", Side(Outcome.OK, status=200, latency_ms=1.0, body=b"{}"))
    buf.set_candidate("r1", Side(Outcome.OK, status=200, latency_ms=1.0, body=b"{}"))
    (pair,) = out
    return Pair.model_validate_json(encode_pair(pair, experiment="e", max_body_bytes=1000))


def test_route_and_pointers_travel_in_the_pair() -> None:
    extract = segment_extractor(
        True,
        {"tenant": "/parameters/tenant", "parity": "/parameters/even", "x": "/inputs/0/data/1"},
    )
    body = json.dumps(
        {
            "parameters": {"tenant": "acme\u00e9" + "z" * 300, "even": True},
            "inputs": [{"data": [1, 2.5]}],
        }
    ).encode()
    pair = _emitted(body, extract)
    assert pair.segments == {
        "route": "/v2/models/m/infer",
        "tenant": ("acme\u00e9" + "z" * 300)[:SEGMENT_VALUE_MAX],
        "parity": "true",
        "x": "2.5",
    }


def test_missing_values_and_bodies_that_are_not_json_give_no_value() -> None:
    extract = segment_extractor(False, {"tenant": "/parameters/tenant", "n": "/inputs/9"})
    assert (
        _emitted(b'{"parameters": {"tenant": {"nested": 1}}, "inputs": []}', extract).segments
        is None
    )
    assert _emitted(b"\x00not json", extract).segments is None
    # a lone surrogate: the comparator's parser refuses it, so the body has no values
    assert _emitted(b'{"parameters": {"tenant": "\\ud800x"}}', extract).segments is None
    assert _emitted(b'{"parameters": {"tenant": "a\\u0000b"}}', extract).segments == {
        "tenant": "a\ufffdb"
    }
    assert segment_extractor(False, {}) is None
    assert _emitted(b"{}", None).segments is None  # the default: no dimension, no field
    assert "segments" not in encode_pair_line(b"{}")


def encode_pair_line(body: bytes) -> str:
    out = []
    buf = PairingBuffer(max_pairs=1, on_emit=out.append, candidate_deadline_ms=1.0)
    buf.open("r", ts=1.0, route="/", body=body, deadline=1.0)
    buf.set_prod("r", Side(Outcome.OK, status=200, latency_ms=1.0))
    buf.set_candidate("r", Side(Outcome.OK, status=200, latency_ms=1.0))
    return encode_pair(out[0], experiment="e", max_body_bytes=10).decode()


def test_the_wire_bounds_segments_and_settings_name_the_field() -> None:
    base = json.loads(encode_pair_line(b"{}"))
    with pytest.raises(ValidationError, match="segments"):
        Pair.model_validate({**base, "segments": {f"d{i}": "v" for i in range(9)}})
    with pytest.raises(ValidationError, match="segments"):
        Pair.model_validate({**base, "segments": {"Bad Name": "v"}})
    with pytest.raises(ValidationError, match="segments"):
        Pair.model_validate({**base, "segments": {"tenant": "v" * 129}})
    assert Pair.model_validate(base).segments is None
    with pytest.raises(ValidationError, match="segment_pointers"):
        ProxySettings(
            prod="http://127.0.0.1:1",
            candidate="http://127.0.0.1:2",
            segment_pointers={"tenant": "parameters/tenant"},
        )
