"""Pure pieces of the report: quantiles of censored log-bucket histograms, excerpts, Markdown text."""

from __future__ import annotations

import random

import pytest

from comparator.measure.aggregates import ddsketch_key
from reports.facts import cdf_points, excerpt, quantile
from reports.markdown import _md


def _hist(values: list[float]) -> dict[int, int]:
    h: dict[int, int] = {}
    for v in values:
        h[ddsketch_key(v)] = h.get(ddsketch_key(v), 0) + 1
    return h


def test_quantile_of_nothing_is_none() -> None:
    assert quantile({}, 0, 0.5) is None


@pytest.mark.parametrize("q", [0.0, 0.5, 0.95, 0.99, 1.0])
def test_quantile_is_the_order_statistic_within_one_percent(q: float) -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(2.0, 0.7) for _ in range(5000)]
    want = sorted(values)[int(q * (len(values) - 1))]
    got = quantile(_hist(values), 0, q)
    assert got is not None and abs(got - want) <= 0.0101 * want


def test_a_quantile_among_the_timeouts_is_not_identifiable() -> None:
    h = _hist([10.0] * 90)
    assert quantile(h, 10, 0.5) == pytest.approx(10.0, rel=0.01)
    assert quantile(h, 10, 0.95) is None  # ranks 90..99 are timeouts


def test_the_cdf_stops_below_one_by_the_share_of_timeouts() -> None:
    xs, ys = cdf_points(_hist([1.0, 2.0, 3.0]), 1)
    assert len(xs) == 3 and xs == sorted(xs)
    assert ys[-1] == pytest.approx(0.75)


def test_excerpts_are_stable_and_bounded() -> None:
    assert excerpt(None) is None
    assert excerpt({"b": 1, "a": "x"}) == '{"a": "x", "b": 1}'
    long = excerpt({"data": list(range(1000))}, limit=50)
    assert long is not None and len(long) == 50 and long.endswith("…")


def test_markdown_text_carries_no_markup() -> None:
    text = _md("<script>alert(1)</script> *bold* [link](x) `code` a|b")
    assert "<" not in text and "*bold*" not in text
    assert "\\[link\\](x)" in text and "\\|" in text and "\\`" in text
