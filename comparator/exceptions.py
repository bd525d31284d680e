"""Errors the comparator raises on purpose; anything else is a bug.

::

    ComparatorError
    ├── StoreError               the database is unreachable, not migrated, or refused a write
    │   ├── UnknownExperiment    a read or a verdict named an experiment that has no row
    │   └── DuplicateKey         a write met a row of its key stored already (a retried batch's pairs)
    └── IngestError              a batch was refused; carries the HTTP status and one-line reason
        ├── Unauthorized         401: no or wrong bearer token
        ├── BodyTooLarge         413: over ``max_body_bytes``
        ├── UnparseableBody      400: not JSON / NDJSON, or an unsupported Content-Type
        └── InvalidPair          422: a pair does not match the wire model; names ``pairs[i].field``
"""

from __future__ import annotations

__all__ = [
    "BodyTooLarge",
    "ComparatorError",
    "DuplicateKey",
    "IngestError",
    "InvalidPair",
    "StoreError",
    "Unauthorized",
    "UnknownExperiment",
    "UnparseableBody",
]


class ComparatorError(Exception):
    """Base of every deliberate comparator error."""


class StoreError(ComparatorError):
    """The database could not do what was asked (unreachable, not migrated, write refused)."""


class UnknownExperiment(StoreError, LookupError):
    """No experiment of that name is stored."""


class DuplicateKey(StoreError):
    """The driver refused a row whose key is stored already (PostgreSQL's unique violation,
    SQLite's primary key constraint)."""


class IngestError(ComparatorError):
    """A refused batch; ``status`` is the HTTP status, ``str()`` the reason sent back."""

    status = 400


class Unauthorized(IngestError):
    status = 401


class BodyTooLarge(IngestError):
    status = 413


class UnparseableBody(IngestError):
    status = 400


class InvalidPair(IngestError):
    status = 422
