"""A comparator outage under steady traffic (the short version of ``bench/soak_comparator_outage``).

While the comparator is down, pairs go to the bounded on-disk spool; when it is back, every pair
arrives exactly once (counted by unique request ids against the ids the clients were given). With
a spool too small for the outage, what does not fit is dropped *and counted*, and the spool never
grows past its bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.scenarios import comparator_outage

OUTAGE_S = 8.0
RATE = 100.0  # requests per second


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_every_pair_is_delivered_once_after_the_outage(tmp_path: Path) -> None:
    result = comparator_outage(tmp_path, outage_s=OUTAGE_S, rate=RATE, max_spool_bytes=64 * 2**20)
    x = result.extra
    assert result.sent == result.ok == len(result.rids) > 0
    assert result.statuses == {200: result.sent} and result.client_errors == 0
    assert x["delivered"] == x["unique"] == result.ok  # exactly once each
    assert x["missing"] == 0 and x["unknown"] == 0
    assert x["pairs"]["spooled"] > 0  # the outage really happened
    assert x["pairs"]["replayed"] + x["pairs"]["delivered"] == result.ok
    assert sum(x["pairs"]["dropped"].values()) == 0
    assert x["max_spool_bytes_seen"] <= x["max_spool_bytes"]
    _balanced(x, result.ok)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_past_the_spool_bound_drops_are_counted_never_silent(tmp_path: Path) -> None:
    bound = 40_000  # bytes: a fraction of what the outage produces
    result = comparator_outage(tmp_path, outage_s=OUTAGE_S, rate=RATE, max_spool_bytes=bound)
    x = result.extra
    dropped = x["pairs"]["dropped"]
    assert result.sent == result.ok > 0
    assert x["max_spool_bytes_seen"] <= bound
    assert dropped["spool_full"] > 0
    assert x["metric_dropped_spool_full"] == dropped["spool_full"]  # visible in /metrics too
    assert x["delivered"] == x["unique"]  # no duplicates
    assert x["unknown"] == 0
    # Every pair is accounted for: delivered, or dropped under a named reason.
    assert x["delivered"] + sum(dropped.values()) == result.ok
    assert x["missing"] == sum(dropped.values())
    _balanced(x, result.ok)


def _balanced(x: dict[str, object], teed: int) -> None:
    """teed == delivered + dropped + in flight, exactly, on /admin/status and /metrics."""
    acc: dict[str, object] = x["accounting"]  # type: ignore[assignment]
    assert acc["unaccounted"] == 0 and x["metric_unaccounted"] == 0, acc
    assert acc["teed"] == teed and acc["inherited"] == 0, acc
    assert acc["in_flight"] == {"buffer": 0, "queue": 0, "shipping": 0, "spool": 0}, acc
    assert acc["delivered"] + acc["dropped"] == teed, acc  # type: ignore[operator]
