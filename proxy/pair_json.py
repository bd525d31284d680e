"""Turn :class:`~proxy.pairing.CompletedPair` objects into a wire batch (DESIGN §5).

This runs in the shipper task as it makes a batch, a slice of pairs at a time, never on the
request path. A body that is valid JSON (without
NaN/Infinity, which JSON does not have) and no larger than ``max_body_bytes`` is spliced into the
pair *as the bytes production or the candidate sent*, never re-serialised: re-printing a
float-heavy prediction costs several times more than checking it. The check accepts exactly what
the comparator's batch parser (pydantic-core) accepts with the body where the batch puts it,
four levels deep: UTF-8 only, no lone surrogates, no NaN, bounded nesting — so a malformed or
hostile body can never break the document's structure or get a whole batch refused. Most bodies
are checked by msgspec's validating skip (no Python objects built, several times faster than
parsing); one with enough brackets to nest near the parser's depth limit, or with a number too
long for the parser, is checked by pydantic-core itself, at its wire depth. Any other body
travels as ``null`` with ``body_bytes`` set, which the comparator counts as an invalid output
instead of rejecting the batch. A body that is not JSON but starts like a JSON object (the OIP
binary tensor extension: a JSON header, then raw tensors) and fits ``max_body_bytes`` also
travels whole, base64, as ``binary``
(:class:`comparator.wire.BinaryBody`) beside it, so that the comparator can decode the outputs.

The pair itself is written by msgspec's encoder from small structs (C, not Python string
assembly); every text field is first made storable (a NUL or a lone surrogate becomes U+FFFD, and
the pair names the field in ``repaired``). Because bodies keep their own whitespace (newlines
included), batches are one JSON document, ``{"pairs": [...]}``, not NDJSON.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
from pydantic_core import from_json

from contract import ERROR_MAX, ROUTE_MAX, SEGMENT_VALUE_MAX, VERSION_MAX
from contract.outcomes import Outcome
from proxy.pairing import CompletedPair, Side

__all__ = [
    "SEGMENT_VALUE_MAX",
    "batch_size",
    "batch_slices",
    "encode_batch",
    "encode_pair",
    "join_batch",
    "reduce_wire",
    "segment_extractor",
    "split_batch",
]

# A body sits four levels deep in a batch: {"pairs":[{"prod":{"body": ...}}]}.
_WIRE_DEPTH = 4
# A body with fewer opening brackets than this cannot nest near the batch parser's depth limit
# (pydantic-core's, about 200 levels), so the validating skip alone decides.
_FEW_BRACKETS = 128
_skip = msgspec.json.Decoder(msgspec.Raw).decode
# The batch parser refuses a number whose integer part has more digits than this ("number out
# of range"), which the validating skip takes: a body with a run of more digits anywhere (the
# lookbehind keeps the search linear) is judged by the parser itself.
_LONGEST_INT = 4300
_LONG_DIGITS = re.compile(rb"(?<![0-9])[0-9]{%d}" % (_LONGEST_INT + 1))


class _Side(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    outcome: Outcome
    status: int | None = None
    latency_ms: float | None = None
    model_version: str | None = None
    body: msgspec.Raw | None = None
    body_bytes: int | None = None
    error: str | None = None
    binary: msgspec.Raw | None = None


class _Request(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    sha256: str
    body: msgspec.Raw | None  # no default: written as null when there is none
    binary: msgspec.Raw | None = None


class _Pair(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    v: int
    request_id: str
    experiment: str
    ts: str
    route: str
    request: _Request
    prod: _Side
    candidate: _Side
    repaired: list[str] | None = None
    segments: dict[str, str] | None = None


_encode = msgspec.json.Encoder().encode


def _valid_json(body: bytes) -> bool:
    """Whether the batch parser takes ``body`` where the batch puts it (see the module doc)."""
    few = body.count(b"[") + body.count(b"{") < _FEW_BRACKETS
    if few and (len(body) <= _LONGEST_INT or not _LONG_DIGITS.search(body)):
        try:
            _skip(body)
        except msgspec.DecodeError:
            return False
        if body.isascii():
            return True
        try:  # the skip does not check the UTF-8 inside strings
            body.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True
    try:
        from_json(body, allow_inf_nan=False, cache_strings=False)
        # One JSON value: nested where the batch puts it, only the parser's depth limit can fail.
        from_json(b"[" * _WIRE_DEPTH + body + b"]" * _WIRE_DEPTH, cache_strings=False)
    except ValueError:
        return False
    return True


def _checked(body: bytes | None, max_body_bytes: int) -> tuple[msgspec.Raw | None, int | None]:
    """Return ``(the body if it is embeddable JSON, body_bytes if it is not)``."""
    if body is None:
        return None, None
    if not body or len(body) > max_body_bytes or b"\\u0000" in body:
        # A NUL (only ever written \u0000 in JSON) is text no store keeps (PostgreSQL's JSONB).
        return None, len(body)
    if not _valid_json(body):
        return None, len(body)
    return msgspec.Raw(body), None


def _binary(
    body: bytes | None, embedded: msgspec.Raw | None, max_body_bytes: int
) -> msgspec.Raw | None:
    """``{"base64": ...}`` for a body that is not JSON but may be an OIP binary tensor body (it
    starts with ``{``), when it fits ``max_body_bytes``; base64 is ASCII, safe in the pair."""
    if embedded is not None or not body or len(body) > max_body_bytes or body[:1] != b"{":
        return None
    return msgspec.Raw(b'{"base64":"' + base64.b64encode(body) + b'"}')


def _clean(value: str) -> bool:
    """Whether :func:`_storable` leaves ``value`` as it is without looking twice (the usual case)."""
    return value.isascii() and "\x00" not in value


def _storable(value: str) -> str:
    """``value`` as every store accepts it: a NUL or a lone surrogate (a ``%ff`` path decoded
    with ``surrogateescape``) becomes U+FFFD, the replacement character, which marks the spot."""
    if _clean(value):
        return value
    value = value.replace("\x00", "\ufffd")
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _latency(value: float) -> float | None:
    # Latencies are finite by construction (perf_counter differences); a non-finite one would not
    # be JSON, so it travels as null rather than breaking the batch.
    return round(value, 3) if math.isfinite(value) else None


# The last whole second formatted, and its text: pairs of one batch mostly share their second.
_last_second: list[tuple[int, str]] = [(0, "1970-01-01T00:00:00")]


def _timestamp(ts: float) -> str:
    """``ts`` in ISO 8601 UTC to the millisecond, with ``Z``, exactly as
    ``datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")`` writes it (rounded to
    the microsecond half-even, then truncated), but formatting the date only once a second."""
    frac, whole = math.modf(ts)
    seconds, micros = int(whole), round(frac * 1e6)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    elif micros < 0:
        seconds, micros = seconds - 1, micros + 1_000_000
    cached_second, text = _last_second[0]
    if seconds != cached_second:
        text = datetime.fromtimestamp(seconds, UTC).isoformat()[:19]
        _last_second[0] = (seconds, text)
    return f"{text}.{micros // 1000:03d}Z"


def _note(value: str | None, name: str, field: str, repaired: list[str]) -> None:
    """Name ``name.field`` in ``repaired`` when :func:`_storable` changes ``value`` (the whole
    value, before any cut to its field's length)."""
    if value is not None and not _clean(value) and _storable(value) != value:
        repaired.append(f"{name}.{field}" if name else field)


def _side(
    side: Side,
    name: str,
    checked: tuple[msgspec.Raw | None, int | None],
    max_body_bytes: int,
    repaired: list[str],
) -> _Side:
    """One side's object; ``checked`` from :func:`_checked` of its body."""
    body, body_bytes = checked
    raw, status, error, outcome = side.body, side.status, side.error, side.outcome
    version = side.model_version
    if raw is None and outcome is Outcome.OK:  # too large to keep: its size only
        body_bytes = side.body_bytes
    if status is not None and not 100 <= status <= 599:
        # Not HTTP: recorded as this side's protocol error, never a value the comparator refuses.
        repaired.append(f"{name}.status")
        error = f"protocol error: status {status}" + (f"; {error}" if error else "")
        status, outcome = None, Outcome.ERROR
    _note(version, name, "model_version", repaired)
    _note(side.error, name, "error", repaired)
    if version is not None:
        version = _storable(version[:VERSION_MAX])
    if error is not None:
        error = _storable(error[:ERROR_MAX])
    if raw is not None and body is None and b"\\u0000" in raw:  # an embedded body holds none
        repaired.append(f"{name}.body")
    return _Side(
        outcome=outcome,
        status=status,
        latency_ms=None if side.latency_ms is None else _latency(side.latency_ms),
        model_version=version,
        body=body,
        body_bytes=body_bytes,
        error=error,
        binary=_binary(raw, body, max_body_bytes),
    )


def _plain_side(side: Side, checked: tuple[msgspec.Raw | None, int | None]) -> _Side | None:
    """:func:`_side` of the usual side, with nothing to repair and nothing binary (its body
    embedded or absent, no error, a clean version, an HTTP status, a finite latency) in a few
    steps; None for any other side, which :func:`_side` writes."""
    body, body_bytes = checked
    raw, status, version, latency = side.body, side.status, side.model_version, side.latency_ms
    if (
        side.error is not None
        or (raw is not None and body is None)
        or (status is not None and not 100 <= status <= 599)
        or (version is not None and not _clean(version))
        or (latency is not None and not math.isfinite(latency))
    ):
        return None
    if raw is None and side.outcome is Outcome.OK:  # too large to keep: its size only
        body_bytes = side.body_bytes
    return _Side(
        outcome=side.outcome,
        status=status,
        latency_ms=None if latency is None else round(latency, 3),
        model_version=None if version is None else version[:VERSION_MAX],
        body=body,
        body_bytes=body_bytes,
    )


def encode_pair(pair: CompletedPair, *, experiment: str, max_body_bytes: int) -> bytes:
    """One pair as a compact JSON object (bodies spliced in as received).

    The usual pair (clean text, no request body or segments, both sides plain: see
    :func:`_plain_side`) is written in a few steps; any other takes the general path, which
    repairs what is not storable and names it in ``repaired``."""
    prod_checked = _checked(pair.prod.body, max_body_bytes)
    cand = pair.candidate.body
    if cand is not None and cand == pair.prod.body:
        cand_checked = prod_checked  # byte-identical to production's body: checked once
    else:
        cand_checked = _checked(cand, max_body_bytes)
    text = pair.request_id + pair.route + pair.request_sha256 + experiment
    if pair.request_body is None and not pair.segments and _clean(text):
        prod = _plain_side(pair.prod, prod_checked)
        candidate = _plain_side(pair.candidate, cand_checked) if prod is not None else None
        if prod is not None and candidate is not None:
            return _encode(
                _Pair(
                    v=1,
                    request_id=pair.request_id,
                    experiment=experiment,
                    ts=_timestamp(pair.ts),
                    route=pair.route[:ROUTE_MAX],
                    request=_Request(sha256=pair.request_sha256, body=None),
                    prod=prod,
                    candidate=candidate,
                )
            )
    return _encode_general(pair, experiment, max_body_bytes, prod_checked, cand_checked)


def _encode_general(
    pair: CompletedPair,
    experiment: str,
    max_body_bytes: int,
    prod_checked: tuple[msgspec.Raw | None, int | None],
    cand_checked: tuple[msgspec.Raw | None, int | None],
) -> bytes:
    """:func:`encode_pair` of any pair; ``*_checked``: :func:`_checked` of each side's body."""
    repaired: list[str] = []
    _note(pair.request_id, "", "request_id", repaired)
    _note(pair.route, "", "route", repaired)
    request_raw = pair.request_body
    request_body, _ = _checked(request_raw, max_body_bytes)
    if request_body is None and request_raw is not None and b"\\u0000" in request_raw:
        repaired.append("request.body")
    prod = _side(pair.prod, "prod", prod_checked, max_body_bytes, repaired)
    candidate = _side(pair.candidate, "candidate", cand_checked, max_body_bytes, repaired)
    segments = pair.segments
    return _encode(
        _Pair(
            v=1,
            request_id=_storable(pair.request_id),
            experiment=_storable(experiment),
            ts=_timestamp(pair.ts),
            route=_storable(pair.route[:ROUTE_MAX]),
            request=_Request(
                sha256=_storable(pair.request_sha256),
                body=request_body,
                binary=_binary(request_raw, request_body, max_body_bytes),
            ),
            prod=prod,
            candidate=candidate,
            repaired=repaired or None,
            segments=(
                {_storable(k): _storable(v) for k, v in segments.items()} if segments else None
            ),
        )
    )


_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_batch = msgspec.json.Decoder(dict[str, list[msgspec.Raw]]).decode
_NULL = msgspec.Raw(b"null")
_SIDES = ("prod", "candidate", "twin")


def reduce_wire(item: bytes) -> bytes | None:
    """A wire pair with its bodies reduced to their sizes, as bodies over ``max_body_bytes``
    travel: each side's ``body`` goes, ``body_bytes`` says its size (its length in the pair, so
    whitespace the encoder left out around it is not counted), and ``binary`` goes. None when
    it has no body to reduce. Used on spooled batches, whose pairs exist only as bytes: works
    without parsing the bodies (no number in them can fail a parser). Raises
    ``msgspec.DecodeError`` for bytes that are not a pair object."""
    pair = _fields(item)
    changed = False
    for name in _SIDES:
        raw = pair.get(name)
        if raw is None:
            continue
        side = _fields(raw)
        body = side.get("body")
        text = None if body is None else bytes(body)
        # The encoder writes no "body" key for a side without one, so a "body" here is an
        # embedded body — the JSON document null too, unless the side already carries a size.
        embedded = text is not None and (text != b"null" or "body_bytes" not in side)
        if not embedded and "binary" not in side:
            continue
        if text is not None and embedded:
            side["body_bytes"] = msgspec.Raw(b"%d" % len(text))
            del side["body"]  # as the encoder writes a side without a body: no key
        side.pop("binary", None)
        pair[name] = msgspec.Raw(_encode(side))
        changed = True
    raw = pair.get("request")
    if raw is not None:
        request = _fields(raw)
        body = request.get("body")
        if (body is not None and bytes(body) != b"null") or "binary" in request:
            request["body"] = _NULL
            request.pop("binary", None)
            pair["request"] = msgspec.Raw(_encode(request))
            changed = True
    return _encode(pair) if changed else None


def split_batch(payload: bytes) -> list[bytes]:
    """The encoded pairs of a ``{"pairs": [...]}`` batch, each as its bytes (not re-written).
    Raises ``msgspec.DecodeError`` or ``KeyError`` for anything else."""
    return [bytes(item) for item in _batch(payload)["pairs"]]


def _resolve(doc: Any, pointer: str) -> Any:
    """RFC 6901: the value at ``pointer`` in ``doc``, or None when there is none."""
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(doc, dict):
            doc = doc.get(token)
        elif isinstance(doc, list) and token.isascii() and token.isdigit():
            i = int(token)
            doc = doc[i] if i < len(doc) else None
        else:
            return None
    return doc


def segment_extractor(
    route: bool, pointers: Mapping[str, str]
) -> Callable[[str, bytes], dict[str, str] | None] | None:
    """The pairing buffer's segment function: ``route`` adds the route as dimension ``route``,
    ``pointers`` (dimension → JSON pointer) a string, number or boolean in the request's JSON
    body (a categorical feature), cut to :data:`SEGMENT_VALUE_MAX` characters. A body that is not
    JSON, or a pointer to nothing or to an object, gives that dimension no value. None when no
    dimension is configured. Header dimensions are read when the pair opens (proxy.headers).
    """
    if not route and not pointers:
        return None
    items = list(pointers.items())

    def extract(path: str, body: bytes) -> dict[str, str] | None:
        out = {"route": path[:SEGMENT_VALUE_MAX]} if route else {}
        if items and body:
            try:
                doc = from_json(body)
            except ValueError:
                doc = None
            for name, pointer in items:
                value = _resolve(doc, pointer)
                if isinstance(value, bool):
                    out[name] = "true" if value else "false"
                elif isinstance(value, str | int | float):
                    out[name] = str(value)[:SEGMENT_VALUE_MAX]
        return out or None

    return extract


def batch_slices(items: list[bytes], per_slice: int) -> Iterator[bytes]:
    """``{"pairs": [...]}`` for ``POST /v1/pairs``, from pairs already encoded, in pieces of at
    most ``per_slice`` pairs; each piece is joined with its brackets and commas in one copy."""
    n = len(items)
    if not n:
        yield b'{"pairs":[]}'
        return
    for start in range(0, n, per_slice):
        end = min(start + per_slice, n)
        parts = [b","] * (2 * (end - start) + 1)
        parts[0] = b'{"pairs":[' if start == 0 else b","
        parts[-1] = b"]}" if end == n else b""
        parts[1:-1:2] = items[start:end]
        yield b"".join(parts)


def join_batch(items: list[bytes]) -> bytes:
    """The whole batch in one piece, copied once: concatenating the brackets to a joined list
    copied a megabyte batch three times, each into fresh pages the kernel must fault in."""
    return b"".join(batch_slices(items, max(len(items), 1)))  # one piece: returned as it is


def batch_size(items: list[bytes]) -> int:
    """``len(join_batch(items))``, without joining them."""
    return sum(map(len, items)) + max(len(items) - 1, 0) + len(b'{"pairs":[]}')


def encode_batch(pairs: list[CompletedPair], *, experiment: str, max_body_bytes: int) -> bytes:
    """``{"pairs": [...]}`` for ``POST /v1/pairs``."""
    return join_batch(
        [encode_pair(p, experiment=experiment, max_body_bytes=max_body_bytes) for p in pairs]
    )
