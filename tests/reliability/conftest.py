"""Fixtures of the reliability suite: the fake upstreams on a background loop, the proxy process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.fakes import (
    FakeCandidate,
    FakeComparator,
    FakeProduction,
    LoopThread,
    ProxyProcess,
)


@dataclass
class Upstreams:
    lt: LoopThread
    prod: FakeProduction
    cand: FakeCandidate
    comp: FakeComparator
    prod_url: str
    cand_url: str
    comp_url: str


@pytest.fixture
def lt() -> Iterator[LoopThread]:
    loop_thread = LoopThread()
    try:
        yield loop_thread
    finally:
        loop_thread.close()


@pytest.fixture
def up(lt: LoopThread) -> Upstreams:
    prod, cand, comp = FakeProduction(lt), FakeCandidate(lt), FakeComparator()
    ups = Upstreams(
        lt, prod, cand, comp, lt.serve(prod.app()), lt.serve(cand.app()), lt.serve(comp.app())
    )
    return ups


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """``start_proxy(prod=..., candidate=..., comparator=..., **kw)``; every one is stopped."""
    started: list[ProxyProcess] = []

    def start(**kw: Any) -> ProxyProcess:
        kw.setdefault("spool_dir", tmp_path / f"spool{len(started)}")
        proxy = ProxyProcess(**kw)
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()
