"""Bounded polling: the bound only turns a hang into a failure with a message."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["wait_until"]


def wait_until(
    predicate: Callable[[], Any], what: str, limit_s: float = 20.0, step_s: float = 0.02
) -> Any:
    """Poll ``predicate()`` every ``step_s`` until it is truthy (at most ``limit_s``); return
    its value.

    No assertion depends on the bound: it only names what never happened.
    """
    deadline = time.monotonic() + limit_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s:g} s waiting for {what}")
        time.sleep(step_s)
