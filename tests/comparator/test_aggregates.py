"""Mergeable aggregates: DDSketch mapping against VERDICT.md, Chan's merge, JSON round trip."""

from __future__ import annotations

import random

import pytest

from comparator.measure.aggregates import Aggregate, Moments, ddsketch_key, ddsketch_value, keys


@pytest.mark.parametrize(
    ("x", "key", "value"),
    [(12.3, 126, 12.3053443645), (250.0, 277, 252.1777867895)],
)
def test_ddsketch_matches_reference_values(x: float, key: int, value: float) -> None:
    assert ddsketch_key(x) == key
    assert ddsketch_value(key) == pytest.approx(value, rel=1e-8)


def test_ddsketch_bucket_value_is_within_one_percent() -> None:
    rng = random.Random(7)
    for _ in range(1000):
        x = 10 ** rng.uniform(-2, 5)
        assert abs(ddsketch_value(ddsketch_key(x)) - x) <= 0.01 * x * (1 + 1e-12)


def test_tiny_and_zero_latencies_share_the_floor_bucket() -> None:
    assert ddsketch_key(0.0) == ddsketch_key(1e-9) == ddsketch_key(1e-3)


def test_moments_merge_equals_moments_of_the_union() -> None:
    rng = random.Random(1)
    a = [rng.gauss(5, 2) for _ in range(300)]
    b = [rng.gauss(-1, 7) for _ in range(45)]
    merged = Moments.of(a).merge(Moments.of(b))
    whole = Moments.of(a + b)
    assert merged.n == whole.n
    assert merged.mean == pytest.approx(whole.mean, rel=1e-12)
    assert merged.m2 == pytest.approx(whole.m2, rel=1e-10)


def test_moments_of_empty_sample_is_neutral_in_a_merge() -> None:
    m = Moments.of([1.0, 2.0])
    assert m.merge(Moments()) == m
    assert Moments().merge(m) == m
    assert Moments().variance == 0.0


def test_aggregate_merge_adds_every_kind_of_state_and_round_trips_json() -> None:
    x = Aggregate()
    x.add(keys.PAIRS, 3)
    x.add(keys.outcome("cand", "timeout"))
    x.add_moments(keys.JS, Moments.of([0.1, 0.2]))
    x.add_hist(keys.latency("prod"), {126: 2, 277: 1})
    x.add_cats(keys.CONFUSION, {"1,1": 2, "1,7": 1})
    y = Aggregate()
    y.add(keys.PAIRS, 2)
    y.add_hist(keys.latency("prod"), {126: 5})
    y.add_cats(keys.CONFUSION, {"1,7": 4})
    y.add_moments(keys.JS, Moments.of([0.4]))

    total = Aggregate.merged([x, y])
    assert total.count(keys.PAIRS) == 5
    assert total.count(keys.outcome("cand", "timeout")) == 1
    assert total.hist(keys.latency("prod")) == {126: 7, 277: 1}
    assert total.cat(keys.CONFUSION) == {"1,1": 2, "1,7": 5}
    assert total.moment(keys.JS).n == 3
    assert total.moment(keys.JS).mean == pytest.approx(0.7 / 3)
    assert Aggregate.from_json(total.to_json()).to_json() == total.to_json()


def test_paired_cell_names_put_production_first() -> None:
    assert keys.paired(keys.ERROR, True, False) == "error.n10"
    assert keys.paired(keys.TIMEOUT, False, True) == "timeout.n01"
