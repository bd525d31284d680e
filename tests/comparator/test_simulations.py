"""Verdict simulations through the real path: wire-format pairs → ``Store.ingest`` (validation,
measuring, fold, hourly aggregates in SQLite) and memory samples → ``Store.add_memory_samples`` →
a saved look (:func:`comparator.judge.verdict.judge`) at every simulated hour.

Scale: 100 pairs an hour (2 400 a day, a tenth of a 24k/day experiment) keep the suite within a few
minutes on two cores. The policy is the default one with what that scale needs: n_opt estimated from
the first hour as in production, minimums of 500 pairs, the reliability margins widened to what
2 400 pairs can show (1 pp, 0.5 pp for invalid outputs: at 0.1 pp a rate needs ~10^4 pairs), and
``js_tail`` critical so that its planted regression ends in a REJECT of its own (non-critical, a FAIL
only lowers the score). Every other margin is the default.

* A/A (the candidate is production with a little noise, every task): false REJECT ≤ 5% with hourly
  looks to 48 h, and no PROMOTE before 24 h.
* Each planted regression is REJECTed within 48 h, the REJECT naming its check, in ≥ 95% of runs.

The rates measured are in the README's verdict section.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from comparator.judge.decision import Decision
from comparator.judge.policy import Policy, load_policy
from comparator.judge.verdict import judge
from comparator.measure.aggregates import Aggregate, keys
from comparator.measure.normalize import NormalizeConfig
from comparator.store.reads import MemorySample
from comparator.store.store import Store
from comparator.wire import PairBatch

PAIRS_PER_HOUR = 100
MIB = 1024.0 * 1024.0
MEMORY = frozenset({"prod", "cand"})
SIM_POLICY = """
name = "simulation: 100 pairs an hour"
[minimums]
units = 500
[checks.error_delta]
margin = 0.01
[checks.timeout_delta]
margin = 0.01
[checks.invalid_delta]
margin = 0.005
[checks.js_tail]
critical = true
"""


@dataclass(frozen=True)
class Plant:
    """What differs between candidate and production (all zero: an A/A experiment)."""

    task: str = "classification"
    cand_error: float = 0.0  # extra share of candidate 503s
    cand_timeout: float = 0.0  # extra share of candidate timeouts
    cand_invalid: float = 0.0  # share of candidate outputs with a NaN
    unreadable: float = 0.0  # share of pairs whose two answers are not JSON
    flip: float = 0.0  # classification: share of pairs whose candidate top-1 moves
    js: float = 0.0  # classification: share of pairs with a far-off distribution, same top-1
    bias: float = 0.0  # regression: candidate shift in sd(y_p)
    drift: float = 0.0  # embedding: share of pairs with a rotated vector
    shuffle: float = 0.0  # ranking: share of pairs with a shuffled list
    slow: float = 1.0  # candidate latency factor
    leak_mib_h: float = 0.0  # candidate RSS growth


def _out(name: str, data: list[Any], dtype: str = "FP32") -> dict[str, Any]:
    return {"outputs": [{"name": name, "shape": [1, len(data)], "datatype": dtype, "data": data}]}


def _outputs(rng: np.random.Generator, pl: Plant, n: int) -> tuple[list[Any], list[Any]]:
    """n production and candidate bodies of the plant's task."""
    if pl.task == "classification":
        p = rng.dirichlet(np.full(5, 0.6), size=n)
        c = 0.97 * p + 0.03 * rng.dirichlet(np.ones(5), size=n)
        far = rng.random(n) < pl.js  # keep the top-1, move the rest of the mass
        for i in np.flatnonzero(far):
            top = int(p[i].argmax())
            c[i] = 0.01 / 4
            c[i, top] = 0.99
            p[i] = 0.4 / 4
            p[i, top] = 0.6
        flip = rng.random(n) < pl.flip
        c[flip] = np.roll(c[flip], 1, axis=1)
        return (
            [_out("probabilities", r.round(6).tolist()) for r in p],
            [_out("probabilities", r.round(6).tolist()) for r in c],
        )
    if pl.task == "regression":
        y = rng.normal(10.0, 2.0, size=n)
        yc = y + rng.normal(0.0, 0.01, size=n) + pl.bias * 2.0
        return [_out("y", [float(v)]) for v in y], [_out("y", [float(v)]) for v in yc]
    if pl.task == "embedding":
        e = rng.normal(size=(n, 16))
        ec = e + rng.normal(0.0, 0.02, size=(n, 16))
        drift = rng.random(n) < pl.drift
        ec[drift] = rng.normal(size=(int(drift.sum()), 16))
        return (
            [_out("embedding", r.round(5).tolist()) for r in e],
            [_out("embedding", r.round(5).tolist()) for r in ec],
        )
    ids = np.tile(np.arange(10), (n, 1))
    cand = ids.copy()
    for i in np.flatnonzero(rng.random(n) < pl.shuffle):
        cand[i] = rng.permutation(10)
    return (
        [_out("ids", r.tolist(), "INT64") for r in ids],
        [_out("ids", r.tolist(), "INT64") for r in cand],
    )


def _side(rng: np.random.Generator, body: Any, lat: float, p_err: float, p_to: float) -> dict:
    u = rng.random()
    if u < p_to:
        return {"outcome": "timeout", "latency_ms": 1000.0, "error": "deadline 1000 ms"}
    if u < p_to + p_err:
        return {"outcome": "ok", "status": 503, "latency_ms": lat, "body": {"error": "overloaded"}}
    return {"outcome": "ok", "status": 200, "latency_ms": lat, "body": body}


def hour_of_pairs(
    rng: np.random.Generator, pl: Plant, experiment: str, start: datetime, hour: int
) -> list[dict[str, Any]]:
    """One simulated hour of wire-format pairs."""
    n = PAIRS_PER_HOUR
    prod_out, cand_out = _outputs(rng, pl, n)
    lat_p = rng.lognormal(math.log(3.0), 0.3, size=n)
    lat_c = rng.lognormal(math.log(3.0), 0.3, size=n) * pl.slow
    secs = np.sort(rng.uniform(0, 3600, size=n))
    pairs = []
    for i in range(n):
        prod = _side(rng, prod_out[i], float(lat_p[i]), 0.002, 0.001)
        cand = _side(
            rng, cand_out[i], float(lat_c[i]), 0.002 + pl.cand_error, 0.001 + pl.cand_timeout
        )
        if rng.random() < pl.cand_invalid and cand.get("status") == 200:
            body = cand["body"]["outputs"][0]
            cand["body"] = {"outputs": [{**body, "data": [math.nan] * len(body["data"])}]}
        if rng.random() < pl.unreadable:
            for side in (prod, cand):
                if side.get("status") == 200:
                    side["body"], side["body_bytes"] = None, 4096  # binary, not JSON
        rid = f"{experiment}-{hour}-{i}"
        pairs.append(
            {
                "request_id": rid,
                "experiment": experiment,
                "ts": start + timedelta(hours=hour, seconds=float(secs[i])),
                "route": "/v2/models/m/infer",
                "request": {"sha256": hashlib.sha256(rid.encode()).hexdigest()},
                "prod": prod,
                "candidate": cand,
            }
        )
    return pairs


def hour_of_memory(
    rng: np.random.Generator, pl: Plant, start: datetime, hour: int
) -> list[MemorySample]:
    """Six RSS samples a side in the hour; limit 4 000 MiB; the candidate grows by ``leak_mib_h``."""
    out = []
    for k in range(6):
        ts = start + timedelta(hours=hour, minutes=10 * k + 5)
        t = hour + k / 6
        for side, base in (("prod", 1000.0), ("cand", 1000.0 + pl.leak_mib_h * t)):
            value = (base + float(rng.normal(0.0, 5.0))) * MIB
            out.append(MemorySample(ts, side, "rss", value, 4000.0 * MIB))
    return out


@dataclass(frozen=True)
class Run:
    decision: Decision
    hour: int
    reasons: str


async def simulate(
    store: Store,
    policy: Policy,
    experiment: str,
    pl: Plant,
    seed: int,
    stop: Callable[[Decision, str], bool],
) -> Run:
    """Hourly ingest and a saved look after each hour, until ``stop`` or the look past the
    maximum window (the first pair comes seconds after the hour: the 49th look is the first with
    48 h elapsed)."""
    rng = np.random.default_rng(seed)
    start = _START
    decision, reasons = Decision.KEEP_OBSERVING, ""
    for hour in range(49):
        batch = PairBatch.model_validate({"pairs": hour_of_pairs(rng, pl, experiment, start, hour)})
        result = await store.ingest(list(batch.pairs))
        assert result.inserted == PAIRS_PER_HOUR, result
        await store.add_memory_samples(experiment, hour_of_memory(rng, pl, start, hour))
        v = await judge(
            store, experiment, policy, start + timedelta(hours=hour + 1), memory_sources=MEMORY
        )
        decision, reasons = v.decision, " | ".join(v.reasons)
        if stop(decision, reasons):
            return Run(decision, hour + 1, reasons)
    return Run(decision, 49, reasons)


# The first pair's time is the experiment's start: whole hours in the past, so that every pair
# and look is dated before now.
_START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=60)


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    path = tmp_path / "sim_policy.toml"
    path.write_text(SIM_POLICY)
    return load_policy(path)


async def _store(tmp_path: Path, task: str) -> Store:
    return await Store.open(
        f"sqlite:///{tmp_path / 'sim.sqlite'}",
        normalize_config=lambda name: NormalizeConfig(task=task),
    )


@pytest.mark.timeout(400)
async def test_aa_rarely_rejects_and_never_promotes_before_24h(
    tmp_path: Path, policy: Policy
) -> None:
    """A/A, 12 runs per task (48 in all), looked at hourly until PROMOTE, REJECT or 48 h."""
    runs: list[tuple[str, Run]] = []
    for task in ("classification", "regression", "embedding", "ranking"):
        (tmp_path / task).mkdir()
        store = await _store(tmp_path / task, task)
        try:
            for seed in range(12):
                run = await simulate(
                    store,
                    policy,
                    f"aa-{seed}",
                    Plant(task=task),
                    1_000 + seed,
                    lambda d, _: d is not Decision.KEEP_OBSERVING,
                )
                runs.append((task, run))
        finally:
            await store.close()
    rejects = [(t, r) for t, r in runs if r.decision is Decision.REJECT]
    promotes = [r for _, r in runs if r.decision is Decision.PROMOTE]
    assert len(rejects) <= 0.05 * len(runs), rejects[:3]
    assert all(r.hour >= 24 for r in promotes)
    assert len(promotes) >= 0.9 * len(runs), [r for _, r in runs if r not in promotes][:3]


PLANTS = {
    "errors": (Plant(cand_error=0.05), "error_delta"),
    "timeouts": (Plant(cand_timeout=0.05), "timeout_delta"),
    "invalid outputs": (Plant(cand_invalid=0.03), "invalid_delta"),
    "top-1 flips": (Plant(flip=0.15), "top1_disagreement"),
    "JS tail": (Plant(js=0.15), "js_tail"),
    "regression bias": (Plant(task="regression", bias=0.3), "reg_bias"),
    "embedding drift": (Plant(task="embedding", drift=0.15), "emb_cosine_tail"),
    "ranking loss": (Plant(task="ranking", shuffle=1.0), "rank_rbo"),
    "p95/p99 latency": (Plant(slow=3.0), "latency_p9"),
    "memory growth": (Plant(leak_mib_h=60.0), "memory_leak"),
    "unreadable outputs": (Plant(unreadable=0.2), "coverage"),
}
RUNS = 20


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(PLANTS))
async def test_planted_regression_is_rejected_naming_its_check(
    tmp_path: Path, policy: Policy, name: str
) -> None:
    """20 runs per regression: REJECTed within 48 h, the REJECT naming the check, in ≥ 95%."""
    plant, check = PLANTS[name]
    store = await _store(tmp_path, plant.task)
    try:
        runs = [
            await simulate(
                store,
                policy,
                f"bad-{seed}",
                plant,
                2_000 + seed,
                lambda d, why: d is Decision.PROMOTE or (d is Decision.REJECT and check in why),
            )
            for seed in range(RUNS)
        ]
    finally:
        await store.close()
    named = [r for r in runs if r.decision is Decision.REJECT and check in r.reasons]
    assert len(named) >= 0.95 * RUNS, [r for r in runs if r not in named][:2]
    assert all(r.decision is not Decision.PROMOTE for r in runs)


def test_plants_differ_from_aa_only_where_named() -> None:
    """The generator itself: an A/A hour has no planted differences; each plant moves its own."""
    rng = np.random.default_rng(0)
    aa = hour_of_pairs(rng, Plant(), "x", _START, 0)
    assert sum(p["candidate"].get("status") == 503 for p in aa) <= 3
    bad = hour_of_pairs(np.random.default_rng(0), replace(Plant(), cand_error=0.5), "x", _START, 0)
    assert sum(p["candidate"].get("status") == 503 for p in bad) >= 30


async def test_summary_and_coverage_check_show_unreadable_outputs(tmp_path: Path) -> None:
    """One hour with a fifth of the answers not JSON: the summary's coverage and the check agree."""
    from comparator.judge.summary import summarize

    rng = np.random.default_rng(5)
    store = await _store(tmp_path, "classification")
    try:
        pairs = []
        for hour in range(14):
            pairs += hour_of_pairs(rng, Plant(unreadable=0.2), "cov", _START, hour)
        await store.ingest(list(PairBatch.model_validate({"pairs": pairs}).pairs))
        cov = (await summarize(store, "cov"))["divergence"]["coverage"]
        v = await judge(store, "cov", load_policy(None), _START + timedelta(hours=14), save=False)
    finally:
        await store.close()
    ok = [p for p in pairs if p["prod"].get("status") == 200 == p["candidate"].get("status")]
    both_ok, unread = len(ok), sum(p["prod"]["body"] is None for p in ok)
    assert cov["both_ok"] == both_ok
    assert cov["compared"] == both_ok - unread
    assert 0.75 < cov["share"] < 0.85
    check = v.check("coverage")
    assert check.status.value == "FAIL" and check.estimate == pytest.approx(cov["share"])
    assert v.decision is Decision.REJECT and any("coverage" in r for r in v.reasons)


def _twin_pairs(rng: np.random.Generator, task: str, cand_noise: float, n: int) -> list[dict]:
    """Production, its twin and the candidate; the twin differs from production as much as a
    nondeterministic model does (8% of answers), the candidate by ``cand_noise``."""
    out = []
    for i in range(n):
        if task == "classification":
            p = rng.dirichlet(np.ones(4))
            t, c = p.copy(), p.copy()
            if rng.random() < 0.08:
                t = np.roll(p, 1)
            if rng.random() < cand_noise:
                c = np.roll(p, 1)
            bodies = [_out("probabilities", v.round(6).tolist()) for v in (p, t, c)]
        else:
            y = float(rng.normal(10.0, 2.0))
            t = y * (1.2 if rng.random() < 0.08 else 1.0)
            c = y * (1.2 if rng.random() < cand_noise else 1.0)
            bodies = [_out("y", [v]) for v in (y, t, c)]
        rid = f"twin-{task}-{i}"
        side = [{"outcome": "ok", "status": 200, "latency_ms": 3.0, "body": b} for b in bodies]
        in_slice = i % 4 != 0  # a 75% slice; the rest skipped
        out.append(
            {
                "request_id": rid,
                "experiment": f"twin-{task}-{cand_noise}",
                "ts": _START + timedelta(seconds=15 * i),
                "route": "/v2/models/m/infer",
                "request": {"sha256": hashlib.sha256(rid.encode()).hexdigest()},
                "prod": side[0],
                "twin": side[1] if in_slice else {"outcome": "skipped"},
                "candidate": side[2],
            }
        )
    return out


@pytest.mark.parametrize(
    ("task", "check"), [("classification", "top1_disagreement"), ("regression", "reg_tolerance")]
)
async def test_twin_noise_floor_is_paired_per_request(
    tmp_path: Path, task: str, check: str
) -> None:
    """A candidate as nondeterministic as production's twin PASSes on the paired excess although
    its own share is beyond the margin; one that adds 12% more FAILs."""
    store = await _store(tmp_path, task)
    try:
        verdicts = {}
        for noise in (0.08, 0.2):
            pairs = _twin_pairs(np.random.default_rng(11), task, noise, 12_000)
            for k in range(0, len(pairs), 2000):
                batch = PairBatch.model_validate({"pairs": pairs[k : k + 2000]})
                await store.ingest(list(batch.pairs))
            at = _START + timedelta(hours=50)
            verdicts[noise] = await judge(store, f"twin-{task}-{noise}", load_policy(None), at)
    finally:
        await store.close()
    same, worse = verdicts[0.08].check(check), verdicts[0.2].check(check)
    assert same.status.value == "PASS", same.reason
    assert "paired excess over twin" in same.reason and same.lower is not None
    assert same.lower > 0.05  # the share alone is beyond its margin: the twin's floor decides
    assert worse.status.value == "FAIL", worse.reason


async def test_reg_tolerance_has_an_absolute_floor_of_a_hundredth_of_sd(tmp_path: Path) -> None:
    """Outputs around 0 with a tiny absolute noise (0.3% of sd(y_p)): without atol most pairs
    near 0 would be 'out of tolerance' (rtol·|y_p| ≈ 0); with atol = 0.01·sd they are within."""
    rng = np.random.default_rng(2)
    pairs = []
    for i in range(4000):
        y = float(rng.normal(0.0, 1.0))
        rid = f"atol-{i}"
        side = [
            {"outcome": "ok", "status": 200, "latency_ms": 3.0, "body": _out("y", [v])}
            for v in (y, y + float(rng.normal(0.0, 0.003)))
        ]
        pairs.append(
            {
                "request_id": rid,
                "experiment": "atol",
                "ts": _START + timedelta(seconds=30 * i),
                "route": "/v2/models/m/infer",
                "request": {"sha256": hashlib.sha256(rid.encode()).hexdigest()},
                "prod": side[0],
                "candidate": side[1],
            }
        )
    store = await _store(tmp_path, "regression")
    try:
        await store.ingest(list(PairBatch.model_validate({"pairs": pairs}).pairs))
        agg = Aggregate.merged(a for _, a in await store.hourly_aggregates("atol"))
        v = await judge(store, "atol", load_policy(None), _START + timedelta(hours=34), save=False)
    finally:
        await store.close()
    tol = v.check("reg_tolerance")
    assert tol.status.value == "PASS", tol.reason
    assert "atol 0.01" in tol.reason and tol.estimate is not None and tol.estimate < 0.01
    # the flag folded with atol 0 (the ingest's) calls many times more out of tolerance
    assert agg.count(keys.REG_TOL_EXCEED) / agg.count(keys.REG_N) > max(0.03, 4 * tol.estimate)
