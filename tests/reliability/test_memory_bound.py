"""Bounded memory (the short versions of ``bench/soak_hung_candidate`` and of the leak check).

A candidate that never answers, under sustained load: in-flight candidate calls stop at
``max_inflight`` (the rest are shed and counted), the pairing buffer stays bounded, and the proxy's
RSS stops growing. Then ~10^4 faulty tees: afterwards the proxy holds no more sockets, tasks or
memory than before them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.scenarios import faulty_tees, hung_candidate

MAX_INFLIGHT = 64
CONCURRENCY = 32
# The leak check sends this many faulty tees; CI uses 3000 (about 15 s here); the 10^4
# runs with SHADOWTEE_LEAK_N=10000 (about a minute on 2 cores).
LEAK_N = int(os.environ.get("SHADOWTEE_LEAK_N", "3000"))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hung_candidate_keeps_inflight_buffer_and_rss_bounded(tmp_path: Path) -> None:
    result = hung_candidate(
        tmp_path, duration_s=16, concurrency=CONCURRENCY, max_inflight=MAX_INFLIGHT
    )
    load = [s for s in result.samples if s["phase"] == "load"]
    assert len(load) >= 10
    assert result.ok == result.sent and result.client_errors == 0  # clients never noticed
    assert max(s["tee_inflight"] for s in load) <= MAX_INFLIGHT
    assert max(s["tee_inflight"] for s in load[2:]) == MAX_INFLIGHT  # the bound was reached
    assert max(s["pairing_buffer_pairs"] for s in load) <= MAX_INFLIGHT + CONCURRENCY
    counters = result.extra["counters"]
    assert counters["candidate_outcomes"]["shed"] > 0  # past the bound: shed and counted
    # Plateau: after warm-up, the second half of the run adds (almost) nothing to the first.
    warm = load[3:]
    half = len(warm) // 2
    first, second = max(s["rss_mib"] for s in warm[:half]), max(s["rss_mib"] for s in warm[half:])
    assert second - first < 8.0, [s["rss_mib"] for s in load]
    assert result.samples[-1]["tee_inflight"] == 0  # everything released afterwards


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_faulty_tees_leak_no_sockets_tasks_or_memory(tmp_path: Path) -> None:
    result = faulty_tees(tmp_path, n=LEAK_N, concurrency=CONCURRENCY)
    before, after = result.samples
    assert result.ok == result.sent == LEAK_N
    # Pooled keep-alive connections (to production and to the candidate, at most one per
    # concurrent client each) are the only fds that may legitimately differ; a per-request leak
    # would add thousands.
    assert after["fds"] <= before["fds"] + 2 * CONCURRENCY, (before, after)
    assert after["tee_inflight"] == after["pairing_buffer_pairs"] == 0
    assert after["rss_mib"] - before["rss_mib"] < 16.0, (before, after)
    outcomes = result.extra["counters"]["candidate_outcomes"]
    assert outcomes["error"] > 0 and outcomes["timeout"] > 0
