"""A real SQLite store filled once per session with the known experiment of :mod:`.gen`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from comparator.store.reads import MemorySample
from comparator.store.store import Store
from comparator.wire import Pair
from reports import ReportPaths, write_report

from .gen import EXPERIMENT, make_pairs

DAY = date(2026, 11, 22)
PREVIOUS = date(2026, 11, 21)
MEMORY_LIMIT = 2 * 1024**3


@dataclass(frozen=True)
class Filled:
    url: str
    day_pairs: list[Pair]
    previous_pairs: list[Pair]
    memory: list[MemorySample]


def _memory() -> list[MemorySample]:
    start = datetime(2026, 11, 21, tzinfo=UTC)
    out = []
    for i in range(48 * 6):  # every 10 minutes over both days
        ts = start + timedelta(minutes=10 * i)
        out.append(MemorySample(ts, "prod", "rss", 400e6 + 1e5 * i, MEMORY_LIMIT))
        out.append(MemorySample(ts, "cand", "rss", 520e6 + 2e5 * i, MEMORY_LIMIT))
    return out


async def _fill(
    url: str, pairs: list[Pair], memory: list[MemorySample], experiment: str = EXPERIMENT
) -> None:
    store = await Store.open(url, store_bodies=True)
    try:
        for i in range(0, len(pairs), 200):
            await store.ingest(pairs[i : i + 200])
        await store.add_memory_samples(experiment, memory)
    finally:
        await store.close()


@pytest.fixture(scope="session")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    """Two days of a 10-class classifier experiment (the day before warms it up)."""
    path: Path = tmp_path_factory.mktemp("reportdb") / "db.sqlite"
    url = f"sqlite:///{path}"
    previous, day = make_pairs(PREVIOUS), make_pairs(DAY)
    memory = _memory()
    asyncio.run(_fill(url, previous + day, memory))
    yield Filled(url, day, previous, memory)


async def _write(url: str, out: Path, experiment: str = EXPERIMENT) -> ReportPaths:
    store = await Store.open(url, upgrade=False)
    try:
        return await write_report(store, experiment, DAY, out)
    finally:
        await store.close()


@pytest.fixture(scope="session")
def written(filled: Filled, tmp_path_factory: pytest.TempPathFactory) -> ReportPaths:
    """The report of :data:`DAY`, written once and read by several tests."""
    return asyncio.run(_write(filled.url, tmp_path_factory.mktemp("report")))
