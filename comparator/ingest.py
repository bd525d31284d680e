"""Turn the body of ``POST /v1/pairs`` into validated pairs, or refuse it with a reason.

The order of the checks is the order of their cost: the bearer token (401) before any byte is
read, the declared and then the actual size (413) while reading, the JSON or NDJSON syntax (400),
then the wire model (422, naming the first bad field as ``pairs[3].candidate.latency_ms``). A batch
is refused as a whole, so nothing of it reaches the store.

Accepted bodies::

    Content-Type: application/json       {"pairs": [{…}, {…}]}
    Content-Type: application/x-ndjson   one pair per line (blank lines ignored)
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
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
    "check_token",
    "describe_error",
    "parse_body",
    "read_body",
    "read_pairs",
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
    if not isinstance(doc, dict) or "pairs" not in doc:
        raise InvalidPair('pairs: expected an object {"pairs": [...]}')
    if not isinstance(doc["pairs"], list):
        raise InvalidPair("pairs: expected a list")
    extra = sorted(set(doc) - {"pairs"})
    if extra:
        raise InvalidPair(f"{extra[0]}: unexpected key (only 'pairs' is allowed)")
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


async def read_pairs(
    request: web.Request,
    *,
    token: SecretStr | None,
    max_body_bytes: int,
    before_parsing: Callable[[], Awaitable[None]] | None = None,
) -> list[Pair]:
    """Authenticate, read, parse and validate one ingest request; ``before_parsing`` is awaited
    between reading the body and the CPU work of parsing it (``Store.between_writes``)."""
    check_token(request.headers.get("Authorization"), token)
    body = await read_body(request, max_body_bytes)
    if before_parsing is not None:
        await before_parsing()
    ctype = request.headers.get("Content-Type", "")
    if ctype.split(";", 1)[0].strip().lower() in JSON_TYPES:
        return validate_json_body(body)
    return validate_pairs(parse_body(body, ctype))
