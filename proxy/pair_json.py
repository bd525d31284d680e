"""Turn :class:`~proxy.pairing.CompletedPair` objects into a wire batch (DESIGN §5).

This runs in the shipper task, never on the request path. A body that is valid JSON (without
NaN/Infinity, which JSON does not have) and no larger than ``max_body_bytes`` is spliced into the
pair *as the bytes production or the candidate sent*: it is checked with the parser the
comparator itself reads batches with (pydantic-core's ``from_json``: UTF-8 only, no lone
surrogates, no NaN, bounded nesting), so a malformed or hostile body can never break the
document's structure or get a whole batch refused, but it is not re-serialised: re-printing a
float-heavy prediction costs several times more than checking it. Any other body travels as ``null`` with ``body_bytes`` set, which the comparator counts as an
invalid output instead of rejecting the batch. A body that is not JSON but starts like a JSON
object (the OIP binary tensor extension: a JSON header, then raw tensors) and fits
``max_body_bytes`` also travels whole, base64, as ``binary`` (:class:`comparator.wire.BinaryBody`)
beside it, so that the comparator can decode the outputs.

Because bodies keep their own whitespace (newlines included), batches are one JSON document,
``{"pairs": [...]}``, not NDJSON.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from pydantic_core import from_json

from contract import ERROR_MAX, ROUTE_MAX, SEGMENT_VALUE_MAX, VERSION_MAX
from contract.outcomes import Outcome
from proxy.pairing import CompletedPair, Side

__all__ = ["SEGMENT_VALUE_MAX", "encode_batch", "encode_pair", "join_batch", "segment_extractor"]


def _checked(body: bytes | None, max_body_bytes: int) -> tuple[bytes | None, int | None]:
    """Return ``(the body if it is embeddable JSON, body_bytes if it is not)``."""
    if body is None:
        return None, None
    if not body or len(body) > max_body_bytes or b"\\u0000" in body:
        # A NUL (only ever written \u0000 in JSON) is text no store keeps (PostgreSQL's JSONB).
        return None, len(body)
    try:
        from_json(body, allow_inf_nan=False)
    except ValueError:
        return None, len(body)
    return body, None


def _binary(body: bytes | None, embedded: bytes | None, max_body_bytes: int) -> bytes | None:
    """``{"base64": ...}`` for a body that is not JSON but may be an OIP binary tensor body (it
    starts with ``{``), when it fits ``max_body_bytes``; base64 is ASCII, safe in the pair."""
    if embedded is not None or not body or len(body) > max_body_bytes or body[:1] != b"{":
        return None
    return b'{"base64":"' + base64.b64encode(body) + b'"}'


def _text(value: str) -> bytes:
    """A JSON string literal (ASCII-escaped, so any text is safe inside the document) that every
    store accepts: a NUL or a lone surrogate (a ``%ff`` path decoded with ``surrogateescape``)
    becomes U+FFFD, the replacement character, which marks the spot."""
    if not value.isascii() or "\x00" in value:
        value = value.replace("\x00", "\ufffd")
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return _quote(value).encode("ascii")


def _number(value: float) -> bytes:
    # Latencies are finite by construction (perf_counter differences); a non-finite one would not
    # be JSON, so it travels as null rather than breaking the batch.
    return repr(round(value, 3)).encode() if math.isfinite(value) else b"null"


# Each outcome's opening bytes, built once: an enum's ``.value`` is a slow attribute.
_OPEN_SIDE = {outcome: b'{"outcome":"' + outcome.value.encode() + b'"' for outcome in Outcome}

# The last whole second formatted, and its text: pairs of one batch mostly share their second.
_last_second: list[tuple[int, bytes]] = [(0, b"1970-01-01T00:00:00")]


def _timestamp(ts: float) -> bytes:
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
        text = datetime.fromtimestamp(seconds, UTC).isoformat()[:19].encode()
        _last_second[0] = (seconds, text)
    return b"%s.%03dZ" % (text, micros // 1000)


def _needs_repair(value: str | None) -> bool:
    """Whether :func:`_text` changes ``value`` (a NUL or a lone surrogate in it)."""
    if value is None or (value.isascii() and "\x00" not in value):
        return False
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _repairs(pair: CompletedPair) -> list[str]:
    """The fields of ``pair`` the encoding repairs, named as in the wire pair (DESIGN §5)."""
    out = [name for name in ("request_id", "route") if _needs_repair(getattr(pair, name))]
    if pair.request_body is not None and b"\\u0000" in pair.request_body:
        out.append("request.body")
    for name, side in (("prod", pair.prod), ("candidate", pair.candidate)):
        if side.status is not None and not 100 <= side.status <= 599:
            out.append(f"{name}.status")
        if _needs_repair(side.model_version):
            out.append(f"{name}.model_version")
        if _needs_repair(side.error):
            out.append(f"{name}.error")
        if side.body is not None and b"\\u0000" in side.body:
            out.append(f"{name}.body")
    return out


def _side(
    side: Side, body: bytes | None, body_bytes: int | None, binary: bytes | None = None
) -> bytes:
    """One side's object; ``body`` already checked (or ``None``), ``binary`` from :func:`_binary`."""
    if side.body is None and side.outcome is Outcome.OK:  # too large to keep: its size only
        body_bytes = side.body_bytes
    status, error, outcome = side.status, side.error, side.outcome
    if status is not None and not 100 <= status <= 599:
        # Not HTTP: recorded as this side's protocol error, never a value the comparator refuses.
        error = f"protocol error: status {status}" + (f"; {error}" if error else "")
        status, outcome = None, Outcome.ERROR
    out = [_OPEN_SIDE[outcome]]
    if status is not None:
        out += (b',"status":', b"%d" % status)
    if side.latency_ms is not None:
        out += (b',"latency_ms":', _number(side.latency_ms))
    if side.model_version is not None:
        out += (b',"model_version":', _text(side.model_version[:VERSION_MAX]))
    if body is not None:
        out += (b',"body":', body)
    if body_bytes is not None:
        out += (b',"body_bytes":', b"%d" % body_bytes)
    if error is not None:
        out += (b',"error":', _text(error[:ERROR_MAX]))
    if binary is not None:
        out += (b',"binary":', binary)
    out.append(b"}")
    return b"".join(out)


def encode_pair(pair: CompletedPair, *, experiment: str, max_body_bytes: int) -> bytes:
    """One pair as a compact JSON object (bodies spliced in as received).

    Built from literal pieces rather than ``json.dumps`` of a dict: every string is escaped by
    the C encoder, numbers are written by ``repr``/``%d``, and the bodies were checked above.
    """
    request_body, _ = _checked(pair.request_body, max_body_bytes)
    prod_checked = _checked(pair.prod.body, max_body_bytes)
    cand = pair.candidate.body
    if cand is not None and cand == pair.prod.body:
        cand_checked = prod_checked  # byte-identical to production's body: checked once
    else:
        cand_checked = _checked(cand, max_body_bytes)
    request_binary = _binary(pair.request_body, request_body, max_body_bytes)
    return b"".join(
        (
            b'{"v":1,"request_id":',
            _text(pair.request_id),
            b',"experiment":',
            _text(experiment),
            b',"ts":"',
            _timestamp(pair.ts),
            b'","route":',
            _text(pair.route[:ROUTE_MAX]),
            b',"request":{"sha256":',
            _text(pair.request_sha256),
            b',"body":',
            b"null" if request_body is None else request_body,
            b"" if request_binary is None else b',"binary":' + request_binary,
            b'},"prod":',
            _side(
                pair.prod, *prod_checked, _binary(pair.prod.body, prod_checked[0], max_body_bytes)
            ),
            b',"candidate":',
            _side(pair.candidate, *cand_checked, _binary(cand, cand_checked[0], max_body_bytes)),
            _repaired(pair),
            _segments(pair),
            b"}",
        )
    )


def _repaired(pair: CompletedPair) -> bytes:
    """``,"repaired":[...]`` when the encoding had to repair a field of ``pair``, else nothing."""
    fields = _repairs(pair)
    if not fields:
        return b""
    return b',"repaired":[' + b",".join(b'"%s"' % f.encode() for f in fields) + b"]"


def _segments(pair: CompletedPair) -> bytes:
    """``,"segments":{...}`` when the pair has segment values, else nothing."""
    if not pair.segments:
        return b""
    return (
        b',"segments":{'
        + b",".join(_text(k) + b":" + _text(v) for k, v in pair.segments.items())
        + b"}"
    )


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


def join_batch(items: list[bytes]) -> bytes:
    """``{"pairs": [...]}`` for ``POST /v1/pairs``, from pairs already encoded."""
    return b'{"pairs":[' + b",".join(items) + b"]}"


def encode_batch(pairs: list[CompletedPair], *, experiment: str, max_body_bytes: int) -> bytes:
    """``{"pairs": [...]}`` for ``POST /v1/pairs``."""
    return join_batch(
        [encode_pair(p, experiment=experiment, max_body_bytes=max_body_bytes) for p in pairs]
    )
