"""proxy.pair_json against a plain reference: the same pair built as a dict and ``json.dumps``.

The proxy writes pairs by splicing bytes (bodies as received, strings through the C escaper) for
speed; the reference below writes the same wire pair the slow, obvious way. Random pairs — odd
text (NUL, lone surrogates from ``%ff`` paths, non-ASCII), statuses out of range, bodies that are
JSON, not JSON, NaN, hold a NUL, look like OIP binary or are too large — must decode to the same
document either way, and every document must be one the comparator's wire model takes.
"""

from __future__ import annotations

import base64
import json
import math
import random
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from comparator.wire import Pair
from contract import ERROR_MAX, ROUTE_MAX, VERSION_MAX
from contract.outcomes import Outcome
from proxy import pair_json
from proxy.pair_json import encode_pair, reduce_wire
from proxy.pairing import CompletedPair, Side

MAX_BODY = 400


def _text(value: str) -> str:
    """What every store accepts: NUL and lone (low) surrogates become U+FFFD."""
    return "".join("\ufffd" if c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF else c for c in value)


def _needs_repair(value: str | None) -> bool:
    return value is not None and _text(value) != value


def _no_constants(name: str) -> Any:
    raise ValueError(name)


def _body(body: bytes | None) -> tuple[Any, int | None, bool]:
    """(the JSON value to embed or None, body_bytes, embedded?)"""
    if body is None:
        return None, None, False
    if not body or len(body) > MAX_BODY or b"\\u0000" in body:
        return None, len(body), False
    try:
        return json.loads(body, parse_constant=_no_constants), None, True
    except ValueError:
        return None, len(body), False


def _binary(body: bytes | None, embedded: bool) -> dict[str, str] | None:
    if embedded or not body or len(body) > MAX_BODY or body[:1] != b"{":
        return None
    return {"base64": base64.b64encode(body).decode()}


def _side(side: Side) -> dict[str, Any]:
    value, body_bytes, embedded = _body(side.body)
    if side.body is None and side.outcome is Outcome.OK:
        body_bytes = side.body_bytes
    status, error, outcome = side.status, side.error, side.outcome
    if status is not None and not 100 <= status <= 599:
        error = f"protocol error: status {status}" + (f"; {error}" if error else "")
        status, outcome = None, Outcome.ERROR
    out: dict[str, Any] = {"outcome": outcome.value}
    if status is not None:
        out["status"] = status
    if side.latency_ms is not None:
        latency = round(side.latency_ms, 3)
        out["latency_ms"] = latency if math.isfinite(latency) else None
    if side.model_version is not None:
        out["model_version"] = _text(side.model_version[:VERSION_MAX])
    if embedded:
        out["body"] = value
    if body_bytes is not None:
        out["body_bytes"] = body_bytes
    if error is not None:
        out["error"] = _text(error[:ERROR_MAX])
    binary = _binary(side.body, embedded)
    if binary is not None:
        out["binary"] = binary
    return out


def reference(pair: CompletedPair, experiment: str) -> dict[str, Any]:
    request_body, _, embedded = _body(pair.request_body)
    request: dict[str, Any] = {"sha256": pair.request_sha256, "body": request_body}
    binary = _binary(pair.request_body, embedded)
    if binary is not None:
        request["binary"] = binary
    stamp = datetime.fromtimestamp(pair.ts, UTC).isoformat(timespec="milliseconds")
    doc: dict[str, Any] = {
        "v": 1,
        "request_id": _text(pair.request_id),
        "experiment": _text(experiment),
        "ts": stamp.replace("+00:00", "Z"),
        "route": _text(pair.route[:ROUTE_MAX]),
        "request": request,
        "prod": _side(pair.prod),
        "candidate": _side(pair.candidate),
    }
    repaired = [n for n in ("request_id", "route") if _needs_repair(getattr(pair, n))]
    if pair.request_body is not None and b"\\u0000" in pair.request_body:
        repaired.append("request.body")
    for name, side in (("prod", pair.prod), ("candidate", pair.candidate)):
        if side.status is not None and not 100 <= side.status <= 599:
            repaired.append(f"{name}.status")
        if _needs_repair(side.model_version):
            repaired.append(f"{name}.model_version")
        if _needs_repair(side.error):
            repaired.append(f"{name}.error")
        if side.body is not None and b"\\u0000" in side.body:
            repaired.append(f"{name}.body")
    if repaired:
        doc["repaired"] = repaired
    if pair.segments:
        doc["segments"] = {_text(k): _text(v) for k, v in pair.segments.items()}
    return doc


# --- random pairs --------------------------------------------------------------------------------

_ODD = [
    "a",
    "Z",
    "/",
    "~",
    " ",
    '"',
    "\\",
    "\x00",
    "\x1f",
    "\x7f",
    "é",
    "日",
    "\U0001f600",
    "\udcff",
]


def _str(rng: random.Random, longest: int = 12) -> str:
    return "".join(rng.choice(_ODD) for _ in range(rng.randint(0, longest)))


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(10**12), 10**12)
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind == 3:
        return _str(rng).replace("\udcff", "?")  # JSON text is UTF-8: no lone surrogate in it
    if kind in (4, 5):
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_str(rng, 4).replace("\udcff", "?"): _value(rng, depth + 1) for _ in range(3)}


def _raw_body(rng: random.Random) -> bytes | None:
    kind = rng.randrange(9)
    if kind == 0:
        return None
    if kind == 1:
        return b""
    if kind in (2, 3):  # JSON, as a server might space it
        indent = rng.choice([None, 1])
        return json.dumps(_value(rng), ensure_ascii=rng.random() < 0.5, indent=indent).encode()
    if kind == 4:
        return b'{"outputs":[{"data":[NaN]}]}'
    if kind == 5:
        return b'{"text":"a\\u0000b"}'
    if kind == 6:  # the OIP binary extension: a JSON header, then raw bytes
        return b'{"outputs":[]}' + bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
    if kind == 7:
        return json.dumps({"big": "x" * MAX_BODY}).encode()  # valid, too large to embed
    return json.dumps(_value(rng)).encode()[:-1] or b"{"  # cut short


def _side_of(rng: random.Random) -> Side:
    outcome = rng.choice(list(Outcome))
    return Side(
        outcome,
        status=rng.choice([None, 200, 503, 99, 600, 0, 42]),
        latency_ms=rng.choice([None, 0.0, 3.14159, 1e-7, 250.0, rng.uniform(0, 1e4)]),
        model_version=rng.choice([None, "1", _str(rng), "v" * (VERSION_MAX + 5)]),
        body=_raw_body(rng),
        body_bytes=rng.choice([None, 0, 12345]),
        error=rng.choice([None, "deadline 250 ms", _str(rng), "e" * (ERROR_MAX + 3)]),
    )


def _pair(rng: random.Random) -> CompletedPair:
    prod = _side_of(rng)
    cand = _side_of(rng)
    if rng.random() < 0.2:  # byte-identical bodies: the proxy checks them once
        cand.body = prod.body
    return CompletedPair(
        request_id=rng.choice(["r1", "r" + _str(rng), "x" * 180 + "~" + "0" * 16]),
        ts=rng.choice([1_790_000_000.0, 1_790_000_000.9995, rng.uniform(0, 4e9)]),
        route=rng.choice(["/v2/models/m/infer", "/" + _str(rng, 30), "/" + "p" * (ROUTE_MAX + 9)]),
        request_sha256="0" * 64,
        request_body=_raw_body(rng),
        prod=prod,
        candidate=cand,
        segments=rng.choice([None, {}, {"tenant": _str(rng), "route": "/a"}]),
    )


@pytest.mark.parametrize("seed", range(8))
def test_the_spliced_pair_equals_the_reference_and_the_wire_model_takes_it(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(250):
        pair = _pair(rng)
        experiment = rng.choice(["e1", "exp.2-b_c"])
        line = encode_pair(pair, experiment=experiment, max_body_bytes=MAX_BODY)
        assert json.loads(line) == reference(pair, experiment), pair
        Pair.model_validate_json(line)


def _usual_side(rng: random.Random, body: bytes | None) -> Side:
    """A side of the kind most pairs have: nothing to repair, its body JSON or absent."""
    return Side(
        rng.choice(list(Outcome)),
        status=rng.choice([None, 100, 200, 503, 599]),
        latency_ms=rng.choice([None, 0.0, 3.14159, 1e-7, rng.uniform(0, 1e4)]),
        model_version=rng.choice([None, "1", "v2.0-rc", "v" * (VERSION_MAX + 5)]),
        body=body,
        body_bytes=rng.choice([None, 0, 12345]),
    )


def _usual_pair(rng: random.Random) -> CompletedPair:
    value = json.dumps(_value(rng)).encode()
    while len(value) > MAX_BODY or b"\\u0000" in value:  # embeddable: valid, small, no NUL
        value = json.dumps(_value(rng)).encode()
    bodies = [None, b"{}", b'{"outputs":[{"data":[0.5,1e-3]}]}', value]
    prod = _usual_side(rng, rng.choice(bodies))
    cand = _usual_side(rng, prod.body if rng.random() < 0.5 else rng.choice(bodies))
    return CompletedPair(
        request_id=rng.choice(["r1", "abc-1f-0123456789abcdef", "x" * 180 + "~" + "0" * 16]),
        ts=rng.uniform(0, 4e9),
        route=rng.choice(["/v2/models/m/infer", "/" + "p" * (ROUTE_MAX + 9)]),
        request_sha256="0" * 64,
        request_body=None,
        prod=prod,
        candidate=cand,
        segments=rng.choice([None, {}]),
    )


_GENERAL = pair_json._encode_general


@pytest.fixture
def general_path(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The request ids of the pairs that went the general way."""
    taken: list[str] = []

    def counted(*args: Any) -> bytes:
        taken.append(args[0].request_id)
        return _GENERAL(*args)

    monkeypatch.setattr(pair_json, "_encode_general", counted)
    return taken


@pytest.mark.parametrize("seed", range(4))
def test_the_usual_pair_takes_the_short_path_and_writes_what_the_general_path_writes(
    seed: int, general_path: list[str]
) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        pair = _usual_pair(rng)
        line = encode_pair(pair, experiment="e1", max_body_bytes=MAX_BODY)
        checked = [pair_json._checked(s.body, MAX_BODY) for s in (pair.prod, pair.candidate)]
        assert line == _GENERAL(pair, "e1", MAX_BODY, *checked)
        assert json.loads(line) == reference(pair, "e1")
    assert not general_path  # every one of them went the short way


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("error", "deadline 250 ms"),
        ("status", 600),
        ("model_version", "v\x00"),
        ("model_version", "v\udcff"),
        ("latency_ms", float("nan")),
        ("body", b'{"a":NaN}'),
        ("body", b"\x00binary"),
    ],
)
def test_a_side_with_anything_to_repair_or_carry_takes_the_general_path(
    field: str, value: Any, general_path: list[str]
) -> None:
    for name in ("prod", "candidate"):
        pair = _usual_pair(random.Random(7))
        setattr(getattr(pair, name), field, value)
        line = encode_pair(pair, experiment="e1", max_body_bytes=MAX_BODY)
        wire = Pair.model_validate_json(line)
        if field == "latency_ms":  # not JSON: the latency travels as none
            assert getattr(wire, name).latency_ms is None
        else:
            assert json.loads(line) == reference(pair, "e1")
    assert len(general_path) == 2


def _embedded(line: bytes, side: str) -> bytes | None:
    """A side's body as embedded in a wire pair (None: not embedded)."""
    fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
    body = fields(fields(line)[side]).get("body") if side in fields(line) else None
    return None if body is None else bytes(body)


@pytest.mark.parametrize("seed", range(4))
def test_reducing_a_pairs_bytes_equals_encoding_it_with_no_body_room(seed: int) -> None:
    """A spooled pair too large alone is reduced from its wire bytes (never parsing its
    bodies): the result must be the pair the encoder writes when no body fits, an embedded
    body's size being its length in the pair (a received ``null`` included: the encoder writes
    no body key for a side without a body)."""
    rng = random.Random(seed)
    for _ in range(300):
        pair = _pair(rng)
        line = encode_pair(pair, experiment="e1", max_body_bytes=MAX_BODY)
        reduced = reduce_wire(line) or line
        expected = json.loads(encode_pair(pair, experiment="e1", max_body_bytes=0))
        for side in ("prod", "candidate"):
            body = _embedded(line, side)
            if body is not None:
                expected[side]["body_bytes"] = len(body)
        assert json.loads(reduced) == expected, pair
        Pair.model_validate_json(reduced)


def test_a_reduced_pair_has_its_bodies_sizes_and_no_body_is_parsed() -> None:
    huge = b"[" + b"7" * 5000 + b"]"  # past Python's int-digit limit: json.loads refuses it
    line = (
        b'{"request_id":"r1","prod":{"outcome":"ok","body":' + huge + b"},"
        b'"candidate":{"outcome":"ok","body":{"a":1},"binary":{"base64":"AA=="}},'
        b'"request":{"sha256":"00","body":"x"}}'
    )
    reduced = reduce_wire(line)
    assert reduced is not None
    doc = msgspec.json.decode(reduced.replace(huge, b"0"))  # the huge number is gone anyway
    assert "body" not in doc["prod"] and doc["prod"]["body_bytes"] == len(huge)
    assert doc["candidate"] == {"outcome": "ok", "body_bytes": 7}
    assert doc["request"] == {"sha256": "00", "body": None}
    assert reduce_wire(reduced) is None  # nothing left to reduce


def test_a_body_that_is_the_json_null_keeps_its_size_when_a_pair_is_reduced() -> None:
    pair = _usual_pair(random.Random(3))
    pair.prod.body, pair.candidate.body = b"null", b'{"outputs":[1]}'
    pair.prod.outcome = pair.candidate.outcome = Outcome.OK
    line = encode_pair(pair, experiment="e1", max_body_bytes=MAX_BODY)
    reduced = reduce_wire(line)
    assert reduced is not None
    assert json.loads(reduced) == json.loads(encode_pair(pair, experiment="e1", max_body_bytes=0))
