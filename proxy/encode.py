"""Turn :class:`~proxy.pairing.CompletedPair` objects into a wire batch (DESIGN §5).

This runs in the shipper task, never on the request path. A body that is valid JSON (without
NaN/Infinity, which JSON does not have) and no larger than ``max_body_bytes`` is spliced into the
pair *as the bytes production or the candidate sent*: it is checked with the parser the
comparator itself reads batches with (pydantic-core's ``from_json``: UTF-8 only, no lone
surrogates, no NaN, bounded nesting), so a malformed or hostile body can never break the
document's structure or get a whole batch refused, but it is not re-serialised — re-printing a float-heavy prediction costs several times more than checking
it. Any other body travels as ``null`` with ``body_bytes`` set, which the comparator counts as an
invalid output instead of rejecting the batch.

Because bodies keep their own whitespace (newlines included), batches are one JSON document,
``{"pairs": [...]}``, not NDJSON.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic_core import from_json

from comparator.wire import Outcome
from proxy.pairing import CompletedPair, Side

__all__ = ["encode_batch", "encode_pair", "join_batch"]

_PLACEHOLDER = "\x00body\x00"  # cannot occur in json.dumps output of our own fields


_QUOTED = json.dumps(_PLACEHOLDER).encode()


def _checked(body: bytes | None, max_body_bytes: int) -> tuple[bytes | None, int | None]:
    """Return ``(the body if it is embeddable JSON, body_bytes if it is not)``."""
    if body is None:
        return None, None
    if not body or len(body) > max_body_bytes:
        return None, len(body)
    try:
        from_json(body, allow_inf_nan=False)
    except ValueError:
        return None, len(body)
    return body, None


def _side(
    side: Side,
    max_body_bytes: int,
    bodies: list[bytes],
    same_as: tuple[bytes | None, tuple[bytes | None, int | None]] | None = None,
) -> dict[str, Any]:
    if same_as is not None and side.body is not None and side.body == same_as[0]:
        body, body_bytes = same_as[1]  # byte-identical to the other side's body: checked once
    else:
        body, body_bytes = _checked(side.body, max_body_bytes)
    if side.body is None and side.outcome is Outcome.OK:  # too large to keep: its size only
        body_bytes = side.body_bytes
    out: dict[str, Any] = {"outcome": side.outcome.value}
    if side.status is not None:
        out["status"] = side.status
    if side.latency_ms is not None:
        out["latency_ms"] = round(side.latency_ms, 3)
    if side.model_version is not None:
        out["model_version"] = side.model_version[:200]
    if body is not None:
        out["body"] = _PLACEHOLDER
        bodies.append(body)
    if body_bytes is not None:
        out["body_bytes"] = body_bytes
    if side.error is not None:
        out["error"] = side.error[:2000]
    return out


def encode_pair(pair: CompletedPair, *, experiment: str, max_body_bytes: int) -> bytes:
    """One pair as a compact JSON object (bodies spliced in as received)."""
    ts = datetime.fromtimestamp(pair.ts, UTC).isoformat(timespec="milliseconds")
    bodies: list[bytes] = []
    request_body, _ = _checked(pair.request_body, max_body_bytes)
    if request_body is not None:
        bodies.append(request_body)
    prod = _side(pair.prod, max_body_bytes, bodies)
    same_as = (
        pair.prod.body,
        (bodies[-1], None) if "body" in prod else (None, prod.get("body_bytes")),
    )
    doc = {
        "v": 1,
        "request_id": pair.request_id,
        "experiment": experiment,
        "ts": ts.replace("+00:00", "Z"),
        "route": pair.route[:2000],
        "request": {
            "sha256": pair.request_sha256,
            "body": None if request_body is None else _PLACEHOLDER,
        },
        "prod": prod,
        "candidate": _side(pair.candidate, max_body_bytes, bodies, same_as),
    }
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if not bodies:
        return text
    # Our own fields are escaped by json.dumps, so the quoted placeholder only marks body slots,
    # in document order: request, prod, candidate.
    parts = text.split(_QUOTED)
    if len(parts) != len(bodies) + 1:  # a field held the placeholder itself: re-serialise
        return _reserialise(text, bodies)
    out = [parts[0]]
    for body, rest in zip(bodies, parts[1:], strict=True):
        out.append(body)
        out.append(rest)
    return b"".join(out)


def _reserialise(text: bytes, bodies: list[bytes]) -> bytes:
    doc = json.loads(text)
    slots = [doc["request"], doc["prod"], doc["candidate"]]
    queue = [json.loads(b) for b in bodies]
    for slot in slots:
        if slot.get("body") == _PLACEHOLDER:
            slot["body"] = queue.pop(0)
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def join_batch(items: list[bytes]) -> bytes:
    """``{"pairs": [...]}`` for ``POST /v1/pairs``, from pairs already encoded."""
    return b'{"pairs":[' + b",".join(items) + b"]}"


def encode_batch(pairs: list[CompletedPair], *, experiment: str, max_body_bytes: int) -> bytes:
    """``{"pairs": [...]}`` for ``POST /v1/pairs``."""
    return join_batch(
        [encode_pair(p, experiment=experiment, max_body_bytes=max_body_bytes) for p in pairs]
    )
