"""Counters kept as plain integers on the hot path, exposed to Prometheus at scrape time.

``prometheus_client`` metric objects take a lock on every ``inc()``/``observe()``; at thousands of
requests per second that is measurable. So the request path only does ``stats.x += 1`` and
:meth:`LatencyHistogram.observe` (one ``bisect`` and two additions — the event loop is one thread),
and :class:`ProxyCollector` turns the numbers into metric families when ``/metrics`` is scraped.
Gauges (in-flight tees, buffer, queue and spool depth) are read from the live objects at that
moment, so they can never drift from the truth. The registry is injected: tests use a fresh one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from contract.outcomes import Outcome

__all__ = ["DROP_REASONS", "PAUSE_SOURCES", "LatencyHistogram", "ProxyCollector", "ProxyStats"]

# Seconds; dense below 10 ms where proxy overhead lives, up to the default production timeout.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

# Why a pair was dropped: no room in the pairing buffer, the ship queue or the spool; the comparator
# refused its batch for good (kept in the spool's rejected/); its spooled batch kept failing while
# others went through (poison) or could not be read back; the spool could not be written; no
# comparator configured; a bug while encoding it.
DROP_REASONS = (
    "buffer_full",
    "queue_full",
    "spool_full",
    "spool_write_error",
    "spool_unreadable",
    "rejected",
    "poison",
    "no_comparator",
    "encode_error",
)

# Who paused the tee: a person through the admin API, or the automatic breaker.
PAUSE_SOURCES = ("operator", "breaker")


@dataclass(slots=True)
class LatencyHistogram:
    """A cumulative-at-scrape histogram: per-bucket counts and a sum, in seconds."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


@dataclass(slots=True)
class ProxyStats:
    """Every counter the proxy keeps. Plain ints: read them anywhere, add to them on the loop."""

    requests: int = 0
    client_body_timeouts: int = 0
    client_aborts: int = 0  # the client broke off its streamed body (FIN or reset) mid-upload
    prod_unreachable: int = 0
    prod_timeouts: int = 0
    prod_broken_bodies: int = 0  # production failed after the response head was sent
    not_sampled: int = 0
    # Tee-able, sampled requests not teed because the tee was paused, by who paused it. Like
    # ``not_sampled`` they open no pair, so they stay outside ``teed`` and the accounting.
    tee_paused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PAUSE_SOURCES, 0))
    skipped_body_too_large: int = 0
    # Tees shed (outcome shed) because the tee's byte budget, max_tee_bytes, was full: at the
    # request, or later for a call whose answer, or production's waiting in its pair, passed it.
    tee_shed_byte_budget: int = 0
    teed: int = 0  # sent or shed; the outcomes below add up to this once nothing is in flight
    outcomes: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    pairs_emitted: int = 0
    pairs_delivered: int = 0
    pairs_spooled: int = 0
    pairs_replayed: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    ship_failures: int = 0
    comparator_failovers: int = 0  # the shipper moved on to the next comparator URL
    pairs_shipping: int = 0  # a gauge: taken off the queue, not yet delivered, spooled or dropped
    spool_inherited: int = 0  # pairs found in the spool at start-up (teed by an earlier process)
    spool_files_set_aside: int = 0  # stray or unreadable files moved into rejected/ at start-up
    spool_batches_set_aside: int = 0  # spooled batches moved into rejected/ since
    prod_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    candidate_latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def snapshot(self) -> dict[str, object]:
        """Counters as plain JSON-able data for ``/admin/status``."""
        return {
            "requests": self.requests,
            "client_body_timeouts": self.client_body_timeouts,
            "client_aborts": self.client_aborts,
            "prod_unreachable": self.prod_unreachable,
            "prod_timeouts": self.prod_timeouts,
            "prod_broken_bodies": self.prod_broken_bodies,
            "not_sampled": self.not_sampled,
            "tee_paused": dict(self.tee_paused),
            "skipped_body_too_large": self.skipped_body_too_large,
            "tee_shed_byte_budget": self.tee_shed_byte_budget,
            "teed": self.teed,
            "candidate_outcomes": {k.value: v for k, v in self.outcomes.items()},
            "pairs": {
                "emitted": self.pairs_emitted,
                "delivered": self.pairs_delivered,
                "spooled": self.pairs_spooled,
                "replayed": self.pairs_replayed,
                "dropped": dict(self.dropped),
            },
            "ship_failures": self.ship_failures,
            "comparator_failovers": self.comparator_failovers,
            "spool_files_set_aside": self.spool_files_set_aside,
            "spool_batches_set_aside": self.spool_batches_set_aside,
        }

    def accounting(self, *, buffer: int, queue: int, spool: int) -> dict[str, Any]:
        """Where every pair is: ``teed`` (plus the pairs inherited in the spool) equals
        ``delivered`` + ``dropped`` + ``in_flight``, exactly, at any moment on the event loop.

        ``teed`` counts every request that was to make a pair: sent to the candidate, shed, or
        skipped for its body size (each opens a pair or is dropped as ``buffer_full``).
        ``buffer``, ``queue`` and ``spool`` are the pairs in the pairing buffer, the ship queue
        and the spool now.
        """
        teed = self.teed + self.skipped_body_too_large
        delivered = self.pairs_delivered + self.pairs_replayed
        dropped = sum(self.dropped.values())
        in_flight = {
            "buffer": buffer,
            "queue": queue,
            "shipping": self.pairs_shipping,
            "spool": spool,
        }
        total_in_flight = sum(in_flight.values())
        return {
            "teed": teed,
            "inherited": self.spool_inherited,
            "delivered": delivered,
            "dropped": dropped,
            "dropped_by_reason": {k: v for k, v in self.dropped.items() if v},
            "in_flight": in_flight,
            "unaccounted": teed + self.spool_inherited - delivered - dropped - total_in_flight,
        }


GAUGE_DOCS = {
    "tee_inflight": "Candidate calls in flight.",
    "tee_max_inflight": "Bound on candidate calls in flight.",
    "tee_held_bytes": (
        "Bytes the candidate calls in flight hold: request bodies, the answers arriving and "
        "production's answers waiting for them (bounded by max_tee_bytes)."
    ),
    "pairing_buffer_pairs": "Pairs waiting for their other half.",
    "ship_queue_pairs": "Finished pairs waiting to be shipped.",
    "ship_queue_bytes": "Bytes of bodies held by the pairs waiting to be shipped or being shipped.",
    "spool_batches": "Batches spooled on disk.",
    "spool_pairs": "Pairs spooled on disk.",
    "spool_bytes": "Bytes spooled on disk.",
}


class ProxyCollector(Collector):
    """Reads :class:`ProxyStats` and the live gauges when Prometheus scrapes."""

    def __init__(self, stats: ProxyStats, gauges: Callable[[], dict[str, float]]):
        self._stats = stats
        self._gauges = gauges  # ProxyState.gauges: described by GAUGE_DOCS

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        s = self._stats
        p = "shadowtee_proxy_"

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(p + name, doc, value=value)

        yield counter("requests", "Client requests received on the data port.", s.requests)
        yield counter(
            "client_body_timeouts",
            "Requests answered 408: the body did not arrive in time.",
            s.client_body_timeouts,
        )
        yield counter(
            "client_aborts",
            "Requests whose client broke off its body mid-upload (no answer attempted).",
            s.client_aborts,
        )
        errs = CounterMetricFamily(
            p + "production_errors",
            "Production failures clients saw: 502 (unreachable), 504 (timeout), broken body.",
            labels=["kind"],
        )
        errs.add_metric(["unreachable"], s.prod_unreachable)
        errs.add_metric(["timeout"], s.prod_timeouts)
        errs.add_metric(["broken_body"], s.prod_broken_bodies)
        yield errs
        yield counter("tee_not_sampled", "Tee-able requests left out by sampling.", s.not_sampled)
        yield counter("teed", "Requests sent to the candidate or shed.", s.teed)
        yield counter(
            "tee_shed_byte_budget",
            "Tees shed because the tee's byte budget (max_tee_bytes) was full.",
            s.tee_shed_byte_budget,
        )
        paused = CounterMetricFamily(
            p + "tee_paused",
            "Tee-able requests not teed while the tee was paused (no pair), by who paused it.",
            labels=["source"],
        )
        for source, value in s.tee_paused.items():
            paused.add_metric([source], value)
        yield paused
        outcomes = CounterMetricFamily(
            p + "candidate_outcomes", "Finished candidate calls by outcome.", labels=["outcome"]
        )
        for outcome, value in s.outcomes.items():
            outcomes.add_metric([outcome.value], value)
        yield outcomes
        pairs = CounterMetricFamily(p + "pairs", "Pairs by what became of them.", labels=["state"])
        pairs.add_metric(["emitted"], s.pairs_emitted)
        pairs.add_metric(["delivered"], s.pairs_delivered)
        pairs.add_metric(["spooled"], s.pairs_spooled)
        pairs.add_metric(["replayed"], s.pairs_replayed)
        pairs.add_metric(["teed"], s.teed + s.skipped_body_too_large)
        yield pairs
        dropped = CounterMetricFamily(
            p + "pairs_dropped", "Pairs dropped, by reason (never silently).", labels=["reason"]
        )
        for reason, value in s.dropped.items():
            dropped.add_metric([reason], value)
        yield dropped
        yield counter("ship_failures", "Failed POSTs to the comparator.", s.ship_failures)
        yield counter(
            "comparator_failovers",
            "Times the shipper moved on to the next comparator URL after a failed POST.",
            s.comparator_failovers,
        )
        yield counter(
            "spool_set_aside",
            "Files moved into the spool's rejected/ folder (stray at start-up, or set aside).",
            s.spool_files_set_aside + s.spool_batches_set_aside,
        )
        yield GaugeMetricFamily(
            p + "pairs_shipping",
            "Pairs in a batch being shipped (off the queue, not yet delivered or spooled).",
            value=s.pairs_shipping,
        )
        yield GaugeMetricFamily(
            p + "pairs_inherited",
            "Pairs found in the spool at start-up (teed by an earlier process).",
            value=s.spool_inherited,
        )
        # teed + inherited == delivered + dropped + buffer + queue + shipping + spool: the
        # difference, read from the live objects at this moment, is 0 unless a pair was lost.
        gauges = self._gauges()
        acc = s.accounting(
            buffer=int(gauges["pairing_buffer_pairs"]),
            queue=int(gauges["ship_queue_pairs"]),
            spool=int(gauges["spool_pairs"]),
        )
        yield GaugeMetricFamily(
            p + "pairs_unaccounted",
            "teed + inherited - delivered - dropped - in flight: 0 when no pair was lost.",
            value=acc["unaccounted"],
        )
        for name, doc, hist in (
            ("production_latency_seconds", "Production response time.", s.prod_latency),
            (
                "candidate_latency_seconds",
                "Candidate response time (ok or error).",
                s.candidate_latency,
            ),
        ):
            family = HistogramMetricFamily(p + name, doc)
            family.add_metric([], hist.cumulative(), sum_value=hist.total)
            yield family
        for key, reading in gauges.items():
            yield GaugeMetricFamily(p + key, GAUGE_DOCS.get(key, key), value=reading)
