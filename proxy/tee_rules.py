"""Which requests are teed: pure logic (route globs, methods, deterministic sampling)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from contract import key_hash, sample_threshold

__all__ = ["TeeRules"]

_MAX_ROUTE_CACHE = 4096


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """``*`` matches one path segment (no ``/``); everything else is literal."""
    return re.compile("".join("[^/]*" if c == "*" else re.escape(c) for c in pattern) + r"\Z")


class TeeRules:
    """Which requests are teed: method, path glob, and a sample of a stable key's hash."""

    def __init__(self, routes: Iterable[str], methods: Iterable[str], sample_rate: float) -> None:
        self._routes = [_glob_to_regex(r) for r in routes]
        self.methods = frozenset(m.upper() for m in methods)
        self.sample_rate = sample_rate
        # Deterministic sampling: the first 8 bytes of BLAKE2b(key) as an integer, compared with a
        # threshold, so the same key is picked on every proxy and on every replay.
        self._threshold = sample_threshold(sample_rate)
        self._route_cache: dict[str, bool] = {}

    def set_sample_rate(self, rate: float) -> None:
        """Change the sample rate live (on the event loop: no request sees half of it)."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sample rate must be within 0..1, got {rate!r}")
        self._threshold = sample_threshold(rate)
        self.sample_rate = rate

    def matches(self, method: str, path: str) -> bool:
        if method not in self.methods:
            return False
        hit = self._route_cache.get(path)
        if hit is None:
            hit = any(r.match(path) for r in self._routes)
            if len(self._route_cache) < _MAX_ROUTE_CACHE:
                self._route_cache[path] = hit
        return hit

    def sampled(self, key: str) -> bool:
        if self.sample_rate >= 1.0:
            return True
        if self.sample_rate <= 0.0:
            return False
        return key_hash(key) < self._threshold
