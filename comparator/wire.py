"""The pair: the wire format (version 1) between the proxy and the comparator.

This is the one module the proxy imports from ``comparator``. It depends on pydantic only, so the
proxy can build, serialise and check pairs without pulling in SQL, numpy or the stats.

A pair records one client request that went to production and (maybe) to the candidate::

    {"v": 1, "request_id": "…", "experiment": "digits-v1-vs-v2", "ts": "2026-11-22T10:00:00.123Z",
     "route": "/v2/models/digits/infer", "request": {"sha256": "…", "body": null},
     "prod":      {"outcome": "ok", "status": 200, "latency_ms": 3.1, "model_version": "1", "body": {…}},
     "candidate": {"outcome": "timeout", "status": null, "latency_ms": 250.0, "model_version": "2",
                   "body": null, "error": "deadline 250 ms"}}

An optional ``"segments": {"tenant": "a", "route": "/v2/…"}`` carries the segment values the proxy
extracted (at most 8 dimensions, values of at most 128 characters); older pairs have none.

``latency_ms`` of a timeout is the deadline: a right-censored value, not a missing one.
``body`` is the parsed JSON of the response. A response that is not JSON travels as ``null`` with
``body_bytes`` set; when it was small enough to keep it also travels as ``binary`` (base64, see
:class:`BinaryBody`), which is how the OIP binary tensor extension's answers reach the comparator.
What cannot be decoded counts as an invalid output.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract import (
    ERROR_MAX,
    EXPERIMENT_PATTERN,
    REQUEST_ID_MAX,
    ROUTE_MAX,
    SEGMENT_DIMENSION_PATTERN,
    SEGMENT_DIMENSIONS_MAX,
    SEGMENT_VALUE_MAX,
    VERSION_MAX,
)
from contract.outcomes import Outcome

__all__ = ["BinaryBody", "DropReport", "Pair", "PairBatch", "RequestInfo", "SideResult"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BinaryBody(_Strict):
    """A body that is not JSON, kept whole: for the OIP binary tensor extension, a JSON header
    followed by the raw tensors of the entries with ``parameters.binary_data_size``.

    ``header_length`` is the message's ``Inference-Header-Content-Length`` when the sender knew
    it; without it the header is the JSON object the body starts with (the comparator checks that
    the declared tensor sizes fill the rest exactly). ``content_type`` is the message's, if known.
    """

    base64: Annotated[str, Field(max_length=1 << 30, pattern=r"^[A-Za-z0-9+/]*={0,2}$")]
    header_length: Annotated[int, Field(ge=0)] | None = None
    content_type: Annotated[str, Field(max_length=VERSION_MAX)] | None = None


class RequestInfo(_Strict):
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    body: Any | None = None
    binary: BinaryBody | None = None


class SideResult(_Strict):
    outcome: Outcome
    status: Annotated[int, Field(ge=100, le=599)] | None = None
    latency_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    model_version: Annotated[str, Field(max_length=VERSION_MAX)] | None = None
    body: Any | None = None
    body_bytes: Annotated[int, Field(ge=0)] | None = None
    error: Annotated[str, Field(max_length=ERROR_MAX)] | None = None
    binary: BinaryBody | None = None  # a body that is not JSON (e.g. OIP binary tensors)

    @property
    def is_error(self) -> bool:
        return self.outcome is Outcome.ERROR or (self.status is not None and self.status >= 500)


class Pair(_Strict):
    v: Literal[1] = 1
    request_id: Annotated[str, Field(min_length=1, max_length=REQUEST_ID_MAX)]
    experiment: Annotated[str, Field(pattern=EXPERIMENT_PATTERN)]
    ts: datetime
    route: Annotated[str, Field(max_length=ROUTE_MAX)]
    request: RequestInfo
    prod: SideResult
    candidate: SideResult
    # Optional production twin on a hash slice of traffic: the noise floor (VERDICT.md).
    twin: SideResult | None = None
    # Fields the proxy had to repair to make the pair storable (a NUL or a lone surrogate
    # replaced by U+FFFD, a status outside 100-599 recorded as a protocol error, a JSON body
    # holding a NUL sent as its size): the pair is stored, and listed in the quarantine.
    repaired: (
        Annotated[list[Annotated[str, Field(pattern=r"^[a-z_.]{1,40}$")]], Field(max_length=16)]
        | None
    ) = None

    # Segment values the proxy extracted (DESIGN.md §5): the route, a configured header, a JSON
    # pointer into the request. A few dimensions, bounded values; never a redacted header.
    segments: (
        Annotated[
            dict[
                Annotated[str, Field(pattern=SEGMENT_DIMENSION_PATTERN)],
                Annotated[str, Field(max_length=SEGMENT_VALUE_MAX)],
            ],
            Field(max_length=SEGMENT_DIMENSIONS_MAX),
        ]
        | None
    ) = None

    @field_validator("ts")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("ts must carry a time zone (use Z for UTC)")
        return value


class PairBatch(_Strict):
    pairs: Annotated[list[Pair], Field(min_length=1, max_length=10_000)]


class DropReport(_Strict):
    """A proxy's cumulative counts of pairs it dropped, by reason, since it started.

    ``POST /v1/experiments/{name}/drops``. Counts only grow for one ``proxy_id`` (a fresh id per
    process start), so the comparator keeps the largest it has seen: a retried or reordered report
    changes nothing.
    """

    proxy_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    dropped: Annotated[
        dict[Annotated[str, Field(pattern=r"^[a-z_]{1,40}$")], Annotated[int, Field(ge=0)]],
        Field(max_length=20),
    ]
