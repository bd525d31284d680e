"""The comparator's own Prometheus metrics, on an injected registry (tests use a fresh one).

Label children are bound once here, so request handlers only call ``inc()``/``observe()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["QUARANTINE_REASONS", "REJECT_REASONS", "ComparatorMetrics"]

REJECT_REASONS = ("unauthorized", "too_large", "unparseable", "invalid", "unsupported", "store")
# comparator.ingest.QUARANTINE_REASONS, kept here so the metrics import nothing of ingest.
QUARANTINE_REASONS = ("invalid", "unstorable_text", "too_old", "future", "repaired")


@dataclass(frozen=True)
class ComparatorMetrics:
    registry: CollectorRegistry
    batches: Counter
    pairs_received: Counter
    pairs_inserted: Counter
    pairs_duplicate: Counter
    rejected: dict[str, Counter]
    quarantined: dict[str, Counter]
    ingest_seconds: Histogram
    scrapes: dict[str, Counter]
    scrape_errors: dict[str, Counter]
    memory_samples: Counter
    leader: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> ComparatorMetrics:
        reg = registry if registry is not None else CollectorRegistry()
        p = "shadowtee_comparator_"
        rejected = Counter(
            p + "batches_rejected", "Ingest batches refused, by reason", ["reason"], registry=reg
        )
        quarantined = Counter(
            p + "pairs_quarantined",
            "Pairs refused one by one and kept in the quarantine, by reason",
            ["reason"],
            registry=reg,
        )
        scrapes = Counter(
            p + "scrapes", "Memory scrapes that succeeded, by side", ["side"], registry=reg
        )
        errors = Counter(
            p + "scrape_errors",
            "Memory scrapes that failed (a gap in the samples), by side",
            ["side"],
            registry=reg,
        )
        sides = ("prod", "cand")
        return cls(
            registry=reg,
            batches=Counter(p + "batches", "Ingest batches stored", registry=reg),
            pairs_received=Counter(p + "pairs_received", "Pairs in stored batches", registry=reg),
            pairs_inserted=Counter(p + "pairs_inserted", "Pairs newly stored", registry=reg),
            pairs_duplicate=Counter(
                p + "pairs_duplicate", "Pairs already stored (retried batches)", registry=reg
            ),
            rejected={r: rejected.labels(reason=r) for r in REJECT_REASONS},
            quarantined={r: quarantined.labels(reason=r) for r in QUARANTINE_REASONS},
            ingest_seconds=Histogram(
                p + "ingest_seconds",
                "Time to validate, measure and store one batch (its body read)",
                registry=reg,
            ),
            scrapes={s: scrapes.labels(side=s) for s in sides},
            scrape_errors={s: errors.labels(side=s) for s in sides},
            memory_samples=Counter(p + "memory_samples", "Memory samples stored", registry=reg),
            leader=Gauge(
                p + "leader",
                "1 while this process runs the background role (memory sampling, periodic looks, "
                "retention): the elected leader on PostgreSQL, the one background process on SQLite",
                registry=reg,
                multiprocess_mode="livesum",
            ),
        )
