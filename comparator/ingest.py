"""Turn the body of ``POST /v1/pairs`` into validated pairs, or refuse it with a reason.

The order of the checks is the order of their cost: the bearer token (401) before any byte is
read, the declared and then the actual size (413) while reading, the JSON or NDJSON syntax (400),
then the wire model, pair by pair.

A body that is not a batch at all (not JSON, not ``{"pairs": [...]}``, empty or over 10,000 pairs)
is refused as a whole (400/422) and nothing of it is stored. Within a batch, each pair is judged on
its own (:func:`screen_body`): one that fails the wire model (422's message, naming the field as
``pairs[3].candidate.latency_ms``) or carries text no store accepts (a NUL, which PostgreSQL refuses
in text and ``\\u0000`` in JSONB; a lone surrogate, which is not UTF-8) is :class:`Refused` with
its reason, to be kept in the quarantine, and the others are stored. A batch from a proxy of this
version is clean: the proxy writes every text field as valid UTF-8 without NUL.

Accepted bodies::

    Content-Type: application/json       {"pairs": [{…}, {…}]}
    Content-Type: application/x-ndjson   one pair per line (blank lines ignored)
"""

from __future__ import annotations

import hmac
import json
import math
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import SecretStr, ValidationError

from comparator.exceptions import (
    BodyTooLarge,
    IngestError,
    InvalidPair,
    Unauthorized,
    UnparseableBody,
)
from comparator.wire import Pair, PairBatch

__all__ = [
    "NDJSON_TYPES",
    "Refused",
    "Screened",
    "check_token",
    "describe_error",
    "parse_body",
    "read_body",
    "screen_body",
    "screen_items",
    "validate_json_body",
    "validate_pairs",
]

NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
JSON_TYPES = frozenset({"application/json", "text/json", ""})
MAX_PAIRS = 10_000  # PairBatch's bound


class UnsupportedMediaType(IngestError):
    status = 415


def check_token(authorization: str | None, token: SecretStr | None) -> None:
    """Raise :class:`Unauthorized` unless ``Authorization: Bearer <token>`` matches (when set)."""
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    expected = token.get_secret_value().encode()
    # compare_digest takes time independent of where the strings differ.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise Unauthorized("missing or wrong bearer token")


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """Read the whole body, refusing it as soon as it is known to exceed ``max_bytes``."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyTooLarge(f"body of {request.content_length} bytes exceeds {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"body exceeds {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(body: bytes, content_type: str) -> list[Any]:
    """The raw pair objects of a JSON or NDJSON body (not yet validated)."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype in NDJSON_TYPES:
        items = []
        for lineno, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                raise UnparseableBody(f"line {lineno}: not JSON: {exc}") from None
        return items
    if ctype not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {ctype!r} not supported: use application/json or application/x-ndjson"
        )
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise UnparseableBody(f"body is not JSON: {exc}") from None
    # Not a batch at all: 400, like a body that is not JSON (DESIGN §4).
    if not isinstance(doc, dict) or "pairs" not in doc:
        raise UnparseableBody('pairs: expected an object {"pairs": [...]}')
    if not isinstance(doc["pairs"], list):
        raise UnparseableBody("pairs: expected a list")
    extra = sorted(set(doc) - {"pairs"})
    if extra:
        raise UnparseableBody(f"{extra[0]}: unexpected key (only 'pairs' is allowed)")
    return doc["pairs"]


def describe_error(exc: ValidationError) -> str:
    """``pairs[3].candidate.latency_ms: Input should be greater than or equal to 0`` (+N more)."""
    err = exc.errors()[0]
    path = ""
    for part in err["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{path or 'pairs'}: {err['msg']}{more}"


def validate_pairs(items: list[Any]) -> list[Pair]:
    """Validate every item against the wire model; the first bad one refuses the batch."""
    if not items:
        raise InvalidPair("pairs: the batch is empty")
    if len(items) > MAX_PAIRS:
        raise InvalidPair(f"pairs: {len(items)} pairs in one batch, at most {MAX_PAIRS}")
    try:
        return list(PairBatch.model_validate({"pairs": items}).pairs)
    except ValidationError as exc:
        raise InvalidPair(describe_error(exc)) from None


def validate_json_body(body: bytes) -> list[Pair]:
    """Parse and validate a JSON body in one pass (pydantic-core); errors as :func:`parse_body`."""
    try:
        return list(PairBatch.model_validate_json(body).pairs)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "json_invalid":
            raise UnparseableBody(f"body is not JSON: {err['msg']}") from None
    # A refused batch is rare: take the slow path for the same message as every other error.
    return validate_pairs(parse_body(body, "application/json"))


@dataclass(frozen=True, slots=True)
class Refused:
    """One pair of a batch refused on its own: where it was, why, and what could be read of it.

    ``reason`` is one of :data:`QUARANTINE_REASONS`; ``detail`` says what exactly (the field);
    ``item`` is the pair as it came (parsed JSON, or the validated pair as JSON data).
    """

    index: int
    reason: str
    detail: str
    item: Any
    experiment: str | None = None
    request_id: str | None = None


# Why a pair is quarantined: it fails the wire model; it carries text no store accepts; it is
# dated far before the experiment's first pair, or in the future (comparator.store.writer); the
# proxy repaired it (stored too, listed for inspection).
QUARANTINE_REASONS = ("invalid", "unstorable_text", "too_old", "future", "repaired")


@dataclass(slots=True)
class Screened:
    """A batch judged pair by pair: ``pairs`` to store, at ``indexes`` of the batch; ``refused``."""

    pairs: list[Pair]
    indexes: list[int]
    refused: list[Refused] = field(default_factory=list)
    received: int = 0


def _bad_text(value: Any) -> str | None:
    """Why ``value`` (JSON data) holds text no store accepts, or ``None`` when it holds none."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return "a NUL character (\\u0000)"
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return "a lone surrogate (not UTF-8)"
        elif isinstance(v, float):
            if not math.isfinite(v):
                return "a non-finite number (not JSON)"
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def _name(item: Any, key: str, limit: int) -> str | None:
    """An item's string field as far as it can be read, made safe to store."""
    value = item.get(key) if isinstance(item, dict) else None
    if not isinstance(value, str):
        return None
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")[:limit]


def screen_items(items: list[Any]) -> Screened:
    """Validate each item on its own; the good ones as pairs, the others :class:`Refused`."""
    if not items:
        raise InvalidPair("pairs: the batch is empty")
    if len(items) > MAX_PAIRS:
        raise InvalidPair(f"pairs: {len(items)} pairs in one batch, at most {MAX_PAIRS}")
    out = Screened([], [], received=len(items))
    for i, item in enumerate(items):
        try:
            pair = Pair.model_validate(item)
        except ValidationError as exc:
            reason, detail = "invalid", f"pairs[{i}]." + describe_error(exc)
        else:
            bad = _bad_text(pair.model_dump(mode="python", include=_TEXT_FIELDS))
            if bad is None:
                out.pairs.append(pair)
                out.indexes.append(i)
                continue
            reason, detail = "unstorable_text", f"pairs[{i}]: {bad}"
        exp, rid = _name(item, "experiment", 128), _name(item, "request_id", 200)
        out.refused.append(Refused(i, reason, detail, item, exp, rid))
    return out


# Every field of a pair that holds text (the outcomes are enum values, the hash is checked hex).
_TEXT_FIELDS: Any = {
    "request_id": True,
    "route": True,
    "request": {"body"},
    **{
        side: {"model_version", "body", "error", "binary"} for side in ("prod", "candidate", "twin")
    },
}


def screen_body(body: bytes, content_type: str) -> Screened:
    """Parse and judge one ingest body pair by pair (see the module docstring).

    The common case, a clean JSON batch, is one pass of pydantic-core over the bytes: it refuses
    lone surrogates itself, and a NUL can only be written ``\\u0000`` in JSON, so a body without
    that sequence holds none. Anything else takes the item-by-item path.
    """
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype in JSON_TYPES and b"\\u0000" not in body:
        try:
            pairs = list(PairBatch.model_validate_json(body).pairs)
            return Screened(pairs, list(range(len(pairs))), received=len(pairs))
        except ValidationError as exc:
            err = exc.errors()[0]
            if err["type"] == "json_invalid":
                raise UnparseableBody(f"body is not JSON: {err['msg']}") from None
    return screen_items(parse_body(body, content_type))
