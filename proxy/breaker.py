"""The tee's automatic breaker: pure logic that takes ``now`` from its caller.

The breaker watches the candidate's failure share — calls that ended in an error or a timeout, or
answered with a 5xx — over a sliding window. It reads cumulative counters (the tee's
``succeeded`` and ``failed``) each time :meth:`Breaker.observe` is called, so the request path
adds to two integers and nothing else; the window is a deque of those snapshots.

States::

    CLOSED ──(≥ min_calls in the window and failed/calls > threshold)──▶ OPEN
    OPEN   ──(probe_successes probes in a row answered well)──────────▶ CLOSED
    OPEN   ──(a probe fails)──▶ OPEN (the streak starts again)

While OPEN the tee is paused except for one probe per ``probe_interval_s`` (:meth:`want_probe`).
Calls that were in flight when the breaker opened finish as they will; only probes decide when it
closes. Closing (and :meth:`reset`) forgets the window, so failures from before the pause never
trip it again.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

__all__ = ["Breaker", "BreakerConfig", "BreakerState"]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    window_s: float
    min_calls: int
    threshold: float  # the failure share (0–1) above which the breaker opens
    probe_interval_s: float
    probe_successes: int

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.probe_interval_s <= 0:
            raise ValueError("window_s and probe_interval_s must be positive")
        if self.min_calls < 1 or self.probe_successes < 1:
            raise ValueError("min_calls and probe_successes must be at least 1")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError("threshold must be in [0, 1)")


class Breaker:
    """Decides when the tee pauses itself and when it resumes; never reads a clock."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.state = BreakerState.CLOSED
        self.opened_at: float | None = None
        self.reason = ""
        self.trips = 0
        self.streak = 0  # probes in a row that succeeded while OPEN
        self._snapshots: deque[tuple[float, int, int]] = deque()
        self._next_probe = 0.0

    # --- feeding it ---------------------------------------------------------------------------

    def observe(self, now: float, succeeded: int, failed: int) -> bool:
        """Record the cumulative counters at ``now``; return ``True`` when this trips it open."""
        snaps = self._snapshots
        snaps.append((now, succeeded, failed))
        horizon = now - self.config.window_s
        # Keep one snapshot at or before the horizon as the window's baseline.
        while len(snaps) > 1 and snaps[1][0] <= horizon:
            snaps.popleft()
        if self.state is not BreakerState.CLOSED:
            return False
        share = self.failure_share()
        if share is None or share <= self.config.threshold:
            return False
        _, base_ok, base_failed = snaps[0]
        calls = succeeded - base_ok + failed - base_failed
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.trips += 1
        self.streak = 0
        self.reason = (
            f"{failed - base_failed} of {calls} candidate calls failed in "
            f"{self.config.window_s:g} s (threshold {self.config.threshold:g})"
        )
        self._next_probe = now + self.config.probe_interval_s
        return True

    def failure_share(self) -> float | None:
        """Failures over calls in the window, or ``None`` below ``min_calls`` calls."""
        snaps = self._snapshots
        if len(snaps) < 2:
            return None
        _, base_ok, base_failed = snaps[0]
        _, ok, failed = snaps[-1]
        calls = ok - base_ok + failed - base_failed
        if calls < self.config.min_calls:
            return None
        return (failed - base_failed) / calls

    # --- probing while open -------------------------------------------------------------------

    def want_probe(self, now: float) -> bool:
        """``True`` (once per ``probe_interval_s``) when a probe call should go out now."""
        if self.state is not BreakerState.OPEN or now < self._next_probe:
            return False
        self._next_probe = now + self.config.probe_interval_s
        return True

    def probe_result(self, now: float, ok: bool) -> bool:
        """Record a probe's result; return ``True`` when this closes the breaker."""
        if self.state is not BreakerState.OPEN:
            return False
        if not ok:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < self.config.probe_successes:
            return False
        self.reset(now)
        return True

    def reset(self, now: float) -> None:
        """Close, and forget the window (an operator's resume, a new candidate, a recovery)."""
        self.state = BreakerState.CLOSED
        self.opened_at = None
        self.reason = ""
        self.streak = 0
        self._snapshots.clear()
        self._next_probe = now

    def view(self) -> dict[str, object]:
        """The breaker's state for ``/admin/status``."""
        share = self.failure_share()
        return {
            "state": self.state.value,
            "reason": self.reason or None,
            "trips": self.trips,
            "probe_streak": self.streak,
            "failure_share": None if share is None else round(share, 4),
            "window_s": self.config.window_s,
            "min_calls": self.config.min_calls,
            "threshold": self.config.threshold,
            "probe_interval_s": self.config.probe_interval_s,
            "probe_successes": self.config.probe_successes,
        }
