"""What became of one side's call, and the one mapping from an exception to it.

Candidate (and production) failures are data, not exceptions: the proxy's tee and data port and
the replay all turn what an upstream call raised into an :class:`Outcome` and a one-line reason
here, so a pair reads the same whichever of them made it.
"""

from __future__ import annotations

import asyncio
import enum

__all__ = ["REASON_MAX", "Outcome", "ProtocolError", "classify"]

REASON_MAX = 300  # characters of a reason built from an exception's text


class Outcome(enum.StrEnum):
    """What became of one side's call."""

    OK = (
        "ok"  # a complete HTTP response arrived in time, any status (a 5xx is an error by `status`)
    )
    ERROR = "error"  # no usable response: connection refused or reset, a malformed response
    TIMEOUT = "timeout"  # no complete response before the deadline (right-censored latency)
    SHED = "shed"  # not sent: the in-flight bound was reached
    SKIPPED = "skipped"  # not sent on purpose (body too large, not sampled for the twin, ...)


class ProtocolError(ConnectionError):
    """The upstream sent something that is not a well-formed HTTP/1.1 response."""


def classify(
    exc: BaseException,
    deadline_ms: float,
    *,
    connect: tuple[type[BaseException], ...] = (ConnectionRefusedError,),
    failures: tuple[type[BaseException], ...] = (OSError,),
) -> tuple[Outcome, str]:
    """The outcome and reason for what an upstream call raised.

    ``connect`` are the exceptions that mean the upstream could not be reached, ``failures``
    the others that are a failed call (an HTTP client library adds its own to both); anything
    else is an unexpected error, named by its type only.
    """
    if isinstance(exc, TimeoutError):
        return Outcome.TIMEOUT, f"deadline {deadline_ms:g} ms"
    if isinstance(exc, asyncio.CancelledError):
        return Outcome.TIMEOUT, "cancelled at shutdown"
    if isinstance(exc, ProtocolError):
        return Outcome.ERROR, f"protocol error: {exc}"[:REASON_MAX]
    if isinstance(exc, connect):
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return Outcome.ERROR, f"connect failed: {detail}"[:REASON_MAX]
    if isinstance(exc, ConnectionResetError):
        return Outcome.ERROR, f"connection reset: {exc}"[:REASON_MAX]
    if isinstance(exc, failures):
        return Outcome.ERROR, f"{type(exc).__name__}: {exc}"[:REASON_MAX]
    return Outcome.ERROR, f"unexpected {type(exc).__name__}"
