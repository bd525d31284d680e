"""Periodic looks: judge every experiment on an interval, expose the result, announce changes.

A *look* is one call of :func:`comparator.judge.verdict.judge` that is saved, so its intervals join the
running intersection. The comparator takes one look per experiment every ``verdict_interval_s``
(and another whenever ``GET /v1/experiments/{name}/verdict`` is asked), and after each:

* the gauges ``shadowtee_comparator_verdict{experiment,decision}`` (1 for the current decision),
  ``shadowtee_comparator_verdict_score`` and ``shadowtee_comparator_top1_disagreement_ratio``
  (over the last two hours of pairs) are updated — computed at scrape time from the last looks;
* when the stored decision changed, the webhook (if configured) receives a signed
  ``decision_changed`` event.

The looker knows which sides' memory the comparator scrapes for which experiment
(``memory_sources``, from the ``scrape`` settings); the verdict keeps it in its state, so a memory
check is NA when nothing is scraped and NODATA (blocking PROMOTE) when a scraped side is silent.

Alerting (``deploy/prometheus/rules.yaml``) and automation both read from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from comparator.judge.verdict import judge
from comparator.judge.webhook import notify_decision
from comparator.measure.aggregates import Aggregate, keys

__all__ = ["LastLook", "LookBook", "Looker"]

log = logging.getLogger(__name__)

DECISIONS = ("PROMOTE", "REJECT", "KEEP_OBSERVING")
DISAGREEMENT_WINDOW = timedelta(hours=2)


@dataclass(frozen=True, slots=True)
class LastLook:
    decision: str
    score: float
    disagreement: float | None


class LookBook(Collector):
    """The last look per experiment, read by Prometheus at scrape time."""

    def __init__(self) -> None:
        self.last: dict[str, LastLook] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        verdict = GaugeMetricFamily(
            "shadowtee_comparator_verdict",
            "1 for the decision of the experiment's last look, 0 for the others.",
            labels=["experiment", "decision"],
        )
        score = GaugeMetricFamily(
            "shadowtee_comparator_verdict_score",
            "Weighted check score (0-100) of the last look.",
            labels=["experiment"],
        )
        disagreement = GaugeMetricFamily(
            "shadowtee_comparator_top1_disagreement_ratio",
            "Share of recent classification pairs whose top-1 classes differ.",
            labels=["experiment"],
        )
        for name, look in sorted(self.last.items()):
            for d in DECISIONS:
                verdict.add_metric([name, d], 1.0 if look.decision == d else 0.0)
            score.add_metric([name], look.score)
            if look.disagreement is not None:
                disagreement.add_metric([name], look.disagreement)
        yield verdict
        yield score
        yield disagreement


def _disagreement(rows: list[tuple[datetime, Aggregate]]) -> float | None:
    agg = Aggregate.merged(a for _, a in rows)
    n = agg.count(keys.CLS_N)
    return None if n == 0 else 1.0 - agg.count(keys.CLS_AGREE) / n


class Looker:
    """Takes looks for the comparator app; owns the webhook session when a webhook is set."""

    def __init__(
        self,
        store: Any,
        policy: Any,
        book: LookBook,
        *,
        webhook: Any | None = None,
        memory_sources: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self._store = store
        # None: not known here (the verdict infers it from the samples)
        self._memory_sources = None if memory_sources is None else dict(memory_sources)
        self._policy = policy
        self._book = book
        self._webhook = webhook
        self._session: aiohttp.ClientSession | None = None

    async def look(self, experiment: str, at: datetime | None = None) -> Any:
        """Judge ``experiment`` (saved), update the gauges and announce a changed decision."""

        previous = self._book.last.get(experiment)
        verdict = await judge(
            self._store,
            experiment,
            self._policy,
            at,
            memory_sources=None
            if self._memory_sources is None
            else self._memory_sources.get(experiment, frozenset()),
        )
        if at is None:
            await self._show(experiment, str(verdict.decision), float(verdict.score))
        if self._webhook is not None and verdict.decision_changed:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            await notify_decision(
                self._session,
                self._webhook,
                verdict,
                previous=previous.decision if previous else None,
            )
        return verdict

    async def refresh(self, experiment: str) -> None:
        """Fill the gauges from the experiment's last saved look, taking none: what a worker
        that does not take the periodic looks (``comparator.workers``) serves on a scrape."""
        payload = await self._store.latest_verdict(experiment)
        if payload is not None:
            await self._show(experiment, str(payload["decision"]), float(payload["score"]))

    async def _show(self, experiment: str, decision: str, score: float) -> None:
        now = datetime.now(UTC)
        rows = await self._store.hourly_aggregates(
            experiment, start=now - DISAGREEMENT_WINDOW, end=now + timedelta(hours=1)
        )
        self._book.last[experiment] = LastLook(decision, score, _disagreement(rows))

    async def look_all(self, *, follow: bool = False) -> None:
        """:meth:`look` at every experiment (:meth:`refresh` when ``follow``)."""
        step = self.refresh if follow else self.look
        for info in await self._store.list_experiments():
            try:
                await step(info.name)
            except Exception:  # one bad experiment must not stop the others' looks
                log.exception("look at %s failed", info.name)

    async def run(self, interval_s: float, *, follow: bool | Callable[[], bool] = False) -> None:
        """:meth:`look_all` every ``interval_s``; while ``follow`` (asked before each pass when
        it is a callable: leadership changes), only the gauges of the looks another process
        takes. A process that becomes the one to look takes its first look within a second."""
        while True:
            following = follow() if callable(follow) else follow
            await self.look_all(follow=following)
            if not callable(follow):
                await asyncio.sleep(interval_s)
                continue
            waited = 0.0
            while waited < interval_s:  # a follower that starts to lead looks at once
                step = min(1.0, interval_s - waited)
                await asyncio.sleep(step)
                waited += step
                if following and not follow():
                    break

    async def close(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
