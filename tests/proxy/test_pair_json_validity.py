"""Which bodies the proxy splices into a pair: exactly those the comparator's batch parser takes.

The proxy decides with msgspec's validating skip (fast) and falls back to pydantic-core, the
comparator's parser, only for bodies with enough brackets to nest near its depth limit. These
tests hold the fast decision to the parser's own on mutated documents, and check the depth rule
through the comparator's real screening of a whole batch: a deep answer must travel as its size,
never make the batch unparseable (which would refuse every other pair in it).
"""

from __future__ import annotations

import json
import random

import pytest
from pydantic_core import from_json

from comparator.ingest import screen_body
from contract.outcomes import Outcome
from proxy.pair_json import encode_batch, encode_pair
from proxy.pairing import CompletedPair, Side

MAX_BODY = 1 << 20

_SEEDS = [
    b'{"a":[1,2.5,-3e10,true,false,null,"x\\n\\u00e9\\ud83d\\ude00"],"b":{"c":""}}',
    b"[0,-0,0.0,1E+2,1e-2,-1.5E-7,12345678901234567890123456789]",
    b'"\xc3\xa9\xf0\x9f\x98\x80"',
    b" \t\r\n[ ] ",
    b'{"model_name":"m","outputs":[{"name":"p","datatype":"FP32","shape":[2],"data":[0.1,0.2]}]}',
    b'"\\\\\\/\\b\\f\\n\\r\\t\\"\\u0041"',
]
# Pieces that break JSON in the ways a server (or an attacker) might: lone surrogates escaped or
# encoded, bad UTF-8, NaN, control characters, stray structure.
_PIECES = [
    b"[", b"]", b"{", b"}", b",", b":", b'"', b"\\", b"\\ud800", b"\\udc00", b"0", b"1", b"-",
    b"+", b".", b"e", b"NaN", b"Infinity", b"true", b"nul", b" ", b"\t", b"\x0b", b"\x0c",
    b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
    b"\xc0\xaf", b"\xef\xbb\xbf", b"\xe2\x80\xa8", b"\\x", b"\\u12", b"1e999", b"00", b"\xff",
]  # fmt: skip


def _pair(body: bytes | None) -> CompletedPair:
    return CompletedPair(
        request_id="r1",
        ts=1_790_000_000.0,
        route="/v2/models/m/infer",
        request_sha256="0" * 64,
        request_body=None,
        prod=Side(Outcome.OK, status=200, latency_ms=1.0, body=body),
        candidate=Side(Outcome.OK, status=200, latency_ms=2.0, body=b"[1]"),
    )


def _embedded(body: bytes) -> bool:
    """Whether the pair carries ``body`` as JSON (a JSON ``null`` body reads as none)."""
    line = encode_pair(_pair(body), experiment="e", max_body_bytes=MAX_BODY)
    return "body_bytes" not in json.loads(line)["prod"]


def _parser_takes(body: bytes) -> bool:
    """The body alone, and the body four levels deep (where a batch holds it)."""
    try:
        from_json(body, allow_inf_nan=False)
        from_json(b"[[[[" + body + b"]]]]", allow_inf_nan=False)
    except ValueError:
        return False
    return True


def _mutated(rng: random.Random) -> bytes:
    body = bytearray(rng.choice(_SEEDS))
    for _ in range(rng.randint(1, 3)):
        at, piece = rng.randint(0, len(body)), rng.choice(_PIECES)
        op = rng.random()
        if op < 0.4:
            body[at:at] = piece
        elif op < 0.7:
            body[at : at + rng.randint(1, 3)] = piece
        else:
            del body[at : at + rng.randint(1, 2)]
    return bytes(body)


@pytest.mark.parametrize("seed", range(4))
def test_the_fast_check_takes_exactly_what_the_comparators_parser_takes(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(5_000):
        body = _mutated(rng)
        if not body or b"\\u0000" in body:
            continue  # travel as their size by a rule of their own
        assert _embedded(body) == _parser_takes(body), body


@pytest.mark.parametrize(
    "body",
    [
        b'{"s":"\xff"}',  # not UTF-8 inside a string: the skip alone would take it
        b'{"s":"\xed\xa0\x80"}',  # a surrogate encoded in UTF-8
        b'{"s":"\xc0\xaf"}',  # an overlong encoding
        b'{"s":"\\ud800"}',  # a lone surrogate, escaped
        b'{"y":NaN}',
    ],
)
def test_bodies_the_parser_refuses_travel_as_their_size(body: bytes) -> None:
    doc = json.loads(encode_pair(_pair(body), experiment="e", max_body_bytes=MAX_BODY))
    assert doc["prod"].get("body") is None and doc["prod"]["body_bytes"] == len(body)


def test_many_shallow_brackets_are_embedded_and_broken_ones_are_not() -> None:
    """A list of 400 objects is past the fast path's bracket count but only two levels deep; the
    same with a cut structure that would be JSON only inside the batch's brackets is not taken."""
    body = json.dumps([{"box": [i, i + 1]} for i in range(400)]).encode()
    assert _embedded(body)
    assert not _embedded(body[1:-1])  # `{...},{...}`: two values
    assert not _embedded(b"1]]]],[[[[" + body)  # closes the pair's own brackets


@pytest.mark.parametrize("depth", [1, 50, 127, 150, 190, 195, 196, 197, 198, 199, 200, 230, 300])
def test_no_nesting_depth_makes_the_batch_unparseable(depth: int) -> None:
    """Each pair's body nested ``depth`` deep, between two ordinary pairs: the comparator's own
    screening parses the batch and keeps all three pairs; a deep body travels as its size."""
    deep = b"[" * depth + b"]" * depth
    batch = encode_batch(
        [_pair(b"[1]"), _pair(deep), _pair(b"[2]")], experiment="e", max_body_bytes=MAX_BODY
    )
    screened = screen_body(batch, "application/json")
    assert screened.refused == [] and len(screened.pairs) == 3
    kept = screened.pairs[1].prod
    if depth < 128:
        assert kept.body is not None
    else:
        assert kept.body is not None or kept.body_bytes == len(deep)
    if depth >= 200:
        assert kept.body is None


@pytest.mark.parametrize(
    ("body", "embedded"),
    [
        (b"[" + b"7" * 4300 + b"]", True),
        (b"[-" + b"7" * 4300 + b"]", True),
        (b"[" + b"7" * 4301 + b"]", False),  # the parser's "number out of range"
        (b'{"x":1' + b"0" * 4300 + b"}", False),
        (b"[" + b"7" * 4301 + b".5]", False),
        (b"[" + b"7" * 4301 + b"e5]", False),
        (b"[0." + b"7" * 6000 + b"]", True),  # fraction digits have no bound
        (b'["' + b"7" * 6000 + b'"]', True),  # digits in a string are text
        (b"[" + b"1234," * 2000 + b"1]", True),  # many numbers, each short
    ],
)
def test_a_number_too_long_for_the_parser_travels_as_its_size(body: bytes, embedded: bool) -> None:
    """The validating skip takes any length of integer; the comparator's batch parser refuses
    one past 4,300 digits, which would get the whole batch refused (found by review)."""
    assert _parser_takes(body) is embedded
    assert _embedded(body) is embedded
    line = encode_batch([_pair(body)], experiment="e", max_body_bytes=1 << 20)
    assert len(screen_body(line, "application/json").pairs) == 1
