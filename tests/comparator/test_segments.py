"""Segments (VERDICT.md "Segments") through the real ingest path.

* Folding: the per-segment hourly aggregates stored by ``Store.ingest`` equal a recomputation from
  the raw pairs of each segment (SQLite and PostgreSQL); cardinality stays bounded.
* Checks: a FAIL confined to one segment REJECTs naming the segment; a segment below the minimums
  blocks nothing; the rates of issue 21 (A/A with 20 segments; a 15-point top-1 regression in one
  segment of 10% of traffic), measured through ingest and hourly looks (longer runs:
  ``bench/verdict_sim.py --segments``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from comparator.judge.decision import Decision
from comparator.judge.policy import Policy, load_policy
from comparator.judge.results import Status
from comparator.judge.verdict import judge
from comparator.measure.aggregates import OTHER, SEGMENT_CAP, Aggregate, keys
from comparator.measure.fold import fold
from comparator.measure.normalize import NormalizeConfig, measure
from comparator.store.store import Store
from comparator.wire import Pair, PairBatch
from tests.comparator import test_simulations as sim
from tests.comparator.store_support import db_url_fixture, exp_fixture

__all__ = ["db_url_fixture", "exp_fixture"]

CONFIG = NormalizeConfig(task="classification")
# The simulation policy with what a segment of a few hundred pairs can show: minimums of 300 pairs
# and n_opt fixed at 2 000 units (the CS is tightest near a segment's size, not the whole window's).
SEG_POLICY = (
    sim.SIM_POLICY.replace("units = 500", "units = 300").replace(
        'name = "simulation: 100 pairs an hour"', 'name = "segments"\nn_opt = 2000'
    )
    + "\n[segments]\nk = 10\n"
)


def _hour(
    rng: np.random.Generator,
    experiment: str,
    hour: int,
    n: int,
    tenant: Callable[[np.random.Generator], str],
    *,
    flip_in: str | None = None,
    flip: float = 0.0,
) -> list[dict[str, Any]]:
    """``n`` A/A pairs of the simulation generator in one hour, each with a tenant segment; in the
    tenant ``flip_in`` a share ``flip`` of the candidate's top-1 moves (as ``Plant.flip``)."""
    out: list[dict[str, Any]] = []
    for chunk in range(math.ceil(n / sim.PAIRS_PER_HOUR)):
        for p in sim.hour_of_pairs(rng, sim.Plant(), experiment, sim._START, hour):
            p["request_id"] += f"-{chunk}"
            t = tenant(rng)
            p["segments"] = {"tenant": t}
            cand = p["candidate"]
            if t == flip_in and cand.get("status") == 200 and rng.random() < flip:
                body = cand["body"]["outputs"][0]
                cand["body"] = {"outputs": [{**body, "data": np.roll(body["data"], 1).tolist()}]}
            out.append(p)
    return out[:n]


@pytest.fixture
def seg_policy(tmp_path: Path) -> Policy:
    path = tmp_path / "seg_policy.toml"
    path.write_text(SEG_POLICY)
    return load_policy(path)


def _recomputed(pairs: list[Pair]) -> dict[Any, Aggregate]:
    start = min(p.ts for p in pairs)
    return fold(pairs, measure(pairs, CONFIG), experiment_start=start, config=CONFIG)


async def test_segment_aggregates_equal_a_recomputation_from_raw_pairs(
    db_url: str, exp: str
) -> None:
    """Batches of uneven sizes over three hours; tenant (5 values, some pairs without one) and user
    (200 values: more than SEGMENT_CAP) dimensions."""
    rng = np.random.default_rng(7)
    raw: list[dict[str, Any]] = []
    for hour in range(3):
        for p in _hour(rng, exp, hour, 300, lambda r: f"t{int(r.integers(5))}"):
            if rng.random() < 0.1:
                del p["segments"]  # an older proxy: no segment at all
            else:
                p["segments"]["user"] = f"u{int(rng.integers(200))}"
            raw.append(p)
    pairs = list(PairBatch.model_validate({"pairs": raw}).pairs)
    store = await Store.open(db_url, normalize_config=lambda name: CONFIG)
    try:
        # Uneven batches, each shuffled; in time order across batches (a pair hours before the
        # experiment's first one is refused as too old).
        order = np.argsort([p.ts.timestamp() for p in pairs])
        for lo, hi in ((0, 1), (1, 250), (250, 600), (600, len(pairs))):
            rng.shuffle(order[lo:hi])
        for lo, hi in ((0, 1), (1, 250), (250, 600), (600, len(pairs))):
            result = await store.ingest([pairs[i] for i in order[lo:hi]])
            assert result.inserted == hi - lo
        rows = dict(await store.hourly_aggregates(exp))
    finally:
        await store.close()
    assert len(rows) == 3
    for at, agg in rows.items():
        in_hour = [p for p in pairs if p.ts.replace(minute=0, second=0, microsecond=0) == at]
        tenants = agg.segments["tenant"]
        expected_values = {p.segments["tenant"] for p in in_hour if p.segments}
        assert set(tenants) == expected_values
        for value, seg in tenants.items():
            members = [p for p in in_hour if p.segments and p.segments["tenant"] == value]
            (want,) = _recomputed(members).values()
            assert seg.counters == want.counters, value
            assert set(seg.moments) == set(want.moments)
            for name, m in seg.moments.items():
                assert m.n == want.moments[name].n
                assert m.mean == pytest.approx(want.moments[name].mean, rel=1e-9, abs=1e-12)
                assert m.m2 == pytest.approx(want.moments[name].m2, rel=1e-7, abs=1e-9)
            assert not any(k.startswith("lat.") for k in seg.hists)
            assert not seg.cats
        # Bounded cardinality: at most SEGMENT_CAP users a row, every pair counted once.
        users = agg.segments["user"]
        assert len(users) <= SEGMENT_CAP
        assert OTHER in users
        assert sum(a.count(keys.PAIRS) for a in users.values()) == sum(
            1 for p in in_hour if p.segments
        )
        for value, seg in users.items():
            if value == OTHER:
                continue
            members = [p for p in in_hour if p.segments and p.segments["user"] == value]
            # a value kept in this row may have gone to OTHER in a batch where it was rare
            assert 0 < seg.count(keys.PAIRS) <= len(members)


def test_top_segments_keep_the_largest_and_merge_the_rest() -> None:
    agg = Aggregate()
    agg.add_segments(
        "tenant",
        {f"t{i}": Aggregate(counters={keys.PAIRS: 100 - i, "x": 1}) for i in range(20)},
    )
    top = agg.top_segments("tenant", 10)
    assert list(top)[:9] == [f"t{i}" for i in range(9)]
    assert top[OTHER].count(keys.PAIRS) == sum(100 - i for i in range(9, 20))
    assert top[OTHER].count("x") == 11
    back = Aggregate.from_json(agg.to_json())
    assert back.segments["tenant"]["t3"].counters == {keys.PAIRS: 97, "x": 1}
    assert "segments" not in Aggregate().to_json()  # older rows read and write as before


async def _run(
    store: Store,
    policy: Policy,
    experiment: str,
    seed: int,
    hours: int,
    per_hour: int,
    tenant: Callable[[np.random.Generator], str],
    stop: Callable[[Decision, str], bool],
    **plant: Any,
) -> tuple[Decision, int, str, Any]:
    rng = np.random.default_rng(seed)
    decision, reasons, v = Decision.KEEP_OBSERVING, "", None
    for hour in range(hours):
        raw = _hour(rng, experiment, hour, per_hour, tenant, **plant)
        batch = PairBatch.model_validate({"pairs": raw})
        assert (await store.ingest(list(batch.pairs))).inserted == per_hour
        v = await judge(store, experiment, policy, sim._START + timedelta(hours=hour + 1))
        decision, reasons = v.decision, " | ".join(v.reasons)
        if stop(decision, reasons):
            return decision, hour + 1, reasons, v
    return decision, hours, reasons, v


def _tenant_10pct(rng: np.random.Generator) -> str:
    """t0 takes 10% of traffic, 19 others share the rest."""
    return "t0" if rng.random() < 0.1 else f"t{1 + int(rng.integers(19))}"


def _tenant_20(rng: np.random.Generator) -> str:
    return f"t{int(rng.integers(20))}"


@pytest.mark.timeout(120)
async def test_regression_in_one_segment_of_10pct_is_rejected_naming_it(
    tmp_path: Path, seg_policy: Policy
) -> None:
    """A 15-point top-1 regression in t0 (10% of traffic): REJECTed naming the segment in ≥ 95%
    of 20 runs, while the overall check alone would not see it."""
    store = await Store.open(
        f"sqlite:///{tmp_path / 'seg.sqlite'}", normalize_config=lambda n: CONFIG
    )
    runs = []
    try:
        for seed in range(20):
            runs.append(
                await _run(
                    store,
                    seg_policy,
                    f"seg-bad-{seed}",
                    3_000 + seed,
                    12,
                    500,
                    _tenant_10pct,
                    lambda d, _: d is not Decision.KEEP_OBSERVING,
                    flip_in="t0",
                    flip=0.15,
                )
            )
    finally:
        await store.close()
    named = [r for r in runs if r[0] is Decision.REJECT and "in segment tenant=t0" in r[2]]
    assert len(named) >= 19, [r[:3] for r in runs if r not in named][:2]
    # The overall top-1 check never failed: the margin hides a regression in one tenant.
    for *_, v in named:
        assert v.check("top1_disagreement").status is not Status.FAIL
        failed = [s for s in v.segments if s.check.status is Status.FAIL]
        # t0 only; the rolled distributions move its JS tail (critical here) as well
        assert {(s.dimension, s.value) for s in failed} == {("tenant", "t0")}
        top1 = [s for s in failed if s.check.id == "top1_disagreement"]
        assert top1 and top1[0].check.lower is not None
        assert top1[0].check.lower > top1[0].check.margin
        assert top1[0].distance > 0


@pytest.mark.timeout(120)
async def test_aa_with_20_segments_rarely_rejects(tmp_path: Path, seg_policy: Policy) -> None:
    """A/A over 20 equal tenants, hourly looks until every segment has ≥ 400 pairs: no segment
    check fails in ≥ 95% of runs (10 runs here; bench/verdict_sim.py --segments runs more)."""
    store = await Store.open(
        f"sqlite:///{tmp_path / 'aa.sqlite'}", normalize_config=lambda n: CONFIG
    )
    runs = []
    try:
        for seed in range(10):
            runs.append(
                await _run(
                    store,
                    seg_policy,
                    f"seg-aa-{seed}",
                    4_000 + seed,
                    8,
                    1000,
                    _tenant_20,
                    lambda d, _: d is Decision.REJECT,
                )
            )
    finally:
        await store.close()
    rejects = [r[:3] for r in runs if r[0] is Decision.REJECT]
    assert len(rejects) <= 0.05 * len(runs), rejects
    last = runs[-1][3]
    # Every segment was judged with data: the top 9 tenants and "(other)".
    judged = {s.value for s in last.segments if s.check.status is not Status.NODATA}
    assert len(judged) == 10 and OTHER in judged, judged


async def test_a_segment_without_enough_data_blocks_nothing(
    tmp_path: Path, seg_policy: Policy
) -> None:
    """A tiny tenant whose every answer disagrees stays NODATA and names no REJECT."""
    store = await Store.open(
        f"sqlite:///{tmp_path / 'small.sqlite'}", normalize_config=lambda n: CONFIG
    )
    try:
        decision, _, reasons, v = await _run(
            store,
            seg_policy,
            "seg-small",
            5_000,
            3,
            600,
            lambda r: "tiny" if r.random() < 0.02 else "big",
            lambda d, _: False,
            flip_in="tiny",
            flip=1.0,
        )
    finally:
        await store.close()
    tiny = [s for s in v.segments if s.value == "tiny" and s.check.id == "top1_disagreement"]
    assert tiny and tiny[0].check.status is Status.NODATA
    assert "segment" not in reasons
    assert decision is Decision.KEEP_OBSERVING
