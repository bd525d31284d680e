"""Live control of the tee: pause and resume, the sample rate, the candidate, and the breaker.

:class:`TeeControl` is the one object that changes the tee while the proxy runs. An operator
drives it through the admin port's write API (:mod:`proxy.admin`, behind a bearer token), the
:class:`~proxy.breaker.Breaker` drives it from a periodic tick. Every change is logged as one line
(who, what, from what to what — never a token), shown on ``/admin/status`` and ``/metrics``, and
lasts until the next change or a restart (the settings the process started with are not
rewritten).

The request path never calls into this module: it reads ``tee.paused`` and the rules' sample
threshold, plain attributes this object sets on the event loop.

* **Pause** (operator or breaker): sampled tee-able requests do not enter the tee — no candidate
  call, no pair — and are counted in ``tee_paused{source}``. An operator's pause wins over the
  breaker: no probes go out until the operator resumes.
* **Resume** (operator): clears the operator's pause and resets the breaker (it trips again if the
  candidate still fails).
* **Sample rate**: the deterministic threshold changes at once for the next request.
* **Candidate**: a new :class:`CandidateClient` (pool) takes new calls; calls under way finish on
  the old one, which is closed once it has no call and no lingering connection. The breaker starts
  afresh for the new candidate.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy.breaker import Breaker, BreakerConfig, BreakerState
from proxy.metrics import PAUSE_SOURCES
from proxy.settings import ProxySettings
from proxy.tee import Tee
from proxy.tee_rules import TeeRules
from proxy.upstream import CandidateClient

__all__ = [
    "ControlCollector",
    "ControlError",
    "TeeControl",
    "check_candidate_url",
    "check_sample_rate",
]

log = logging.getLogger("shadowtee.proxy")

_MAX_TICK_S = 1.0
_MIN_TICK_S = 0.05


class ControlError(ValueError):
    """A change refused for its value; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def check_sample_rate(value: object) -> float:
    """A number within 0..1 (a JSON boolean is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError("sample_rate", "expected a number within 0..1")
    rate = float(value)
    if not math.isfinite(rate) or not 0.0 <= rate <= 1.0:
        raise ControlError("sample_rate", f"expected a number within 0..1, got {value!r}")
    return rate


def check_candidate_url(value: object) -> str:
    """``http://host:port`` and nothing else: no path, query, credentials or other scheme."""
    if not isinstance(value, str) or len(value) > 2048:
        raise ControlError("candidate", "expected a string http://host:port")
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ControlError("candidate", f"expected http://host:port, got {value!r}") from None
    if (
        parts.scheme != "http"
        or not parts.hostname
        or port is None
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or any(c.isspace() for c in text)
    ):
        raise ControlError("candidate", f"expected http://host:port, got {value!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"http://{host}:{port}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TeeControl:
    """The tee's live settings, the operator's changes and the breaker, in one place."""

    def __init__(
        self,
        *,
        tee: Tee,
        rules: TeeRules,
        settings: ProxySettings,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._tee = tee
        self._rules = rules
        self._clock = clock
        self._wall = wall
        self.candidate = settings.candidate
        self.operator_paused = False
        self.breaker: Breaker | None = None
        if settings.breaker:
            self.breaker = Breaker(
                BreakerConfig(
                    window_s=settings.breaker_window_s,
                    min_calls=settings.breaker_min_calls,
                    threshold=settings.breaker_threshold,
                    probe_interval_s=settings.breaker_probe_interval_s,
                    probe_successes=settings.breaker_probe_successes,
                )
            )
        self.changes = dict.fromkeys(PAUSE_SOURCES, 0)
        self.last_change: dict[str, Any] | None = None
        self.last_change_ts: float | None = None
        tee.on_probe = self._probe_result

    # --- what the operator asks for -----------------------------------------------------------

    def pause(self, by: str) -> dict[str, Any]:
        was = self._tee.paused
        self.operator_paused = True
        self._apply()
        self._record("operator", by, "pause", "running" if not was else "paused", "paused")
        return self.view()

    def resume(self, by: str) -> dict[str, Any]:
        was = "paused" if self._tee.paused else "running"
        self.operator_paused = False
        if self.breaker is not None:
            self.breaker.reset(self._clock())
        self._apply()
        self._record("operator", by, "resume", was, "running")
        return self.view()

    def set_sample_rate(self, value: object, by: str) -> dict[str, Any]:
        rate = check_sample_rate(value)
        old = self._rules.sample_rate
        self._rules.set_sample_rate(rate)
        self._record("operator", by, "sample_rate", old, rate)
        return self.view()

    def set_candidate(self, value: object, by: str) -> dict[str, Any]:
        url = check_candidate_url(value)
        old_client = self._tee.client
        self._tee.switch_client(
            CandidateClient(
                url,
                linger_s=old_client.linger_s,
                max_body_bytes=old_client.max_body_bytes,
                keep_bytes=old_client.keep_bytes,
            )
        )
        old, self.candidate = self.candidate, url
        if self.breaker is not None:  # the new candidate's record starts empty
            self.breaker.reset(self._clock())
        self._apply()
        self._record("operator", by, "candidate", old, url)
        return self.view()

    # --- the breaker --------------------------------------------------------------------------

    def tick(self) -> None:
        """Feed the breaker the tee's counters; open it, or hand the tee a probe."""
        breaker = self.breaker
        if breaker is None:
            return
        now = self._clock()
        tee = self._tee
        if breaker.observe(now, tee.succeeded, tee.failed):
            self._apply()
            self._record("breaker", "breaker", "pause", "running", "paused", breaker.reason)
            return
        probing = breaker.state is BreakerState.OPEN and not self.operator_paused
        if probing and breaker.want_probe(now):
            tee.probes = 1  # not cumulative: at most one probe waits for a request

    def _probe_result(self, ok: bool) -> None:
        breaker = self.breaker
        if breaker is None:
            return
        if breaker.probe_result(self._clock(), ok):
            self._apply()
            streak = breaker.config.probe_successes
            self._record(
                "breaker", "breaker", "resume", "paused", "running", f"{streak} probes answered"
            )

    async def run(self, draining: Callable[[], bool]) -> None:
        """Tick the breaker and close drained candidate pools until cancelled."""
        interval = _MAX_TICK_S
        if self.breaker is not None:
            cfg = self.breaker.config
            interval = min(_MAX_TICK_S, cfg.window_s / 10, cfg.probe_interval_s / 2)
        interval = max(_MIN_TICK_S, interval)
        while True:
            await asyncio.sleep(interval)
            if draining():
                continue
            try:
                self.tick()
                await self._tee.close_retired()
            except Exception:  # a bug here must not stop the breaker for good
                log.exception("tee control: tick failed")

    # --- state --------------------------------------------------------------------------------

    def _apply(self) -> None:
        """Set the tee's plain attributes from the operator's pause and the breaker's state."""
        tee = self._tee
        open_ = self.breaker is not None and self.breaker.state is BreakerState.OPEN
        if self.operator_paused:
            tee.pause_source = "operator"
            tee.probes = 0
            tee.paused = True
        elif open_:
            tee.pause_source = "breaker"
            tee.paused = True
        else:
            tee.paused = False
            tee.probes = 0

    def _record(
        self, source: str, by: str, what: str, old: object, new: object, why: str = ""
    ) -> None:
        now = self._wall()
        self.changes[source] += 1
        self.last_change_ts = now
        self.last_change = {
            "at": _iso(now),
            "source": source,
            "by": by,
            "what": what,
            "from": old,
            "to": new,
            "reason": why or None,
        }
        log.warning(
            "tee control: %s by %s: %r -> %r%s", what, by, old, new, f" ({why})" if why else ""
        )

    @property
    def paused_by(self) -> str | None:
        return self._tee.pause_source if self._tee.paused else None

    def view(self) -> dict[str, Any]:
        """The tee's live settings for ``/admin/status`` and the write API's answers."""
        return {
            "paused": self._tee.paused,
            "paused_by": self.paused_by,
            "sample_rate": self._rules.sample_rate,
            "candidate": self.candidate,
            "last_change": self.last_change,
            "changes": dict(self.changes),
            "breaker": (
                {"enabled": False}
                if self.breaker is None
                else {"enabled": True, **self.breaker.view()}
            ),
        }


class ControlCollector(Collector):
    """The live tee settings as Prometheus gauges and counters, read at scrape time."""

    def __init__(self, control: TeeControl) -> None:
        self._control = control

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self._control
        p = "shadowtee_proxy_"
        paused = GaugeMetricFamily(
            p + "tee_is_paused", "1 while the tee is paused, by who paused it.", labels=["source"]
        )
        for source in PAUSE_SOURCES:
            paused.add_metric([source], 1.0 if c.paused_by == source else 0.0)
        yield paused
        yield GaugeMetricFamily(
            p + "tee_sample_rate", "The sample rate in effect now.", value=c._rules.sample_rate
        )
        info = GaugeMetricFamily(
            p + "tee_candidate_info", "The candidate URL in effect now (value 1).", labels=["url"]
        )
        info.add_metric([c.candidate], 1.0)
        yield info
        changes = CounterMetricFamily(
            p + "tee_changes", "Live changes of the tee, by source.", labels=["source"]
        )
        for source, value in c.changes.items():
            changes.add_metric([source], value)
        yield changes
        if c.last_change_ts is not None:
            yield GaugeMetricFamily(
                p + "tee_last_change_timestamp_seconds",
                "Unix time of the last live change of the tee.",
                value=c.last_change_ts,
            )
        if c.breaker is not None:
            yield GaugeMetricFamily(
                p + "breaker_open",
                "1 while the breaker holds the tee paused.",
                value=1.0 if c.breaker.state is BreakerState.OPEN else 0.0,
            )
            yield CounterMetricFamily(
                p + "breaker_trips", "Times the breaker paused the tee.", value=c.breaker.trips
            )
