"""Map what can go wrong on an upstream call to an :class:`Outcome` and a one-line reason.

This is the only place that knows the exceptions of the upstream clients (:mod:`proxy.exceptions`);
everything downstream (the pair, the metrics, the comparator) sees
``ok | error | timeout | shed | skipped``.
"""

from __future__ import annotations

import asyncio

from comparator.wire import Outcome
from proxy.exceptions import UpstreamProtocolError

__all__ = ["Outcome", "classify"]


def classify(exc: BaseException, deadline_ms: float) -> tuple[Outcome, str]:
    """Return the outcome and reason for an exception raised by an upstream call."""
    if isinstance(exc, TimeoutError):
        return Outcome.TIMEOUT, f"deadline {deadline_ms:g} ms"
    if isinstance(exc, asyncio.CancelledError):
        return Outcome.TIMEOUT, "cancelled at shutdown"
    if isinstance(exc, UpstreamProtocolError):
        return Outcome.ERROR, f"protocol error: {exc}"[:300]
    if isinstance(exc, ConnectionRefusedError):
        return Outcome.ERROR, f"connect failed: {exc.strerror or exc}"
    if isinstance(exc, ConnectionResetError):
        return Outcome.ERROR, f"connection reset: {exc}"[:300]
    if isinstance(exc, OSError):
        return Outcome.ERROR, f"{type(exc).__name__}: {exc}"[:300]
    return Outcome.ERROR, f"unexpected {type(exc).__name__}"
