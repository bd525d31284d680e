"""Reading outputs, per-pair metrics and the hourly fold, checked against numpy/scipy by hand."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon

from comparator.measure.aggregates import Aggregate, Moments, ddsketch_key, keys
from comparator.measure.binary import decode_binary
from comparator.measure.fold import ddsketch_keys, fold
from comparator.measure.normalize import BatchMetrics, NormalizeConfig, measure
from comparator.measure.outputs import _signature, _signatures, read_output, read_outputs
from comparator.wire import Pair

START = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
WARM = START + timedelta(minutes=30)
AUTO = NormalizeConfig()


def side(
    body: Any = None, outcome: str = "ok", status: int | None = 200, latency: float | None = 5.0
) -> dict[str, Any]:
    return {"outcome": outcome, "status": status, "latency_ms": latency, "body": body}


def pair(
    prod: dict[str, Any],
    cand: dict[str, Any],
    *,
    ts: datetime = WARM,
    twin: dict[str, Any] | None = None,
    rid: str = "r",
) -> Pair:
    data: dict[str, Any] = {
        "request_id": rid,
        "experiment": "e",
        "ts": ts,
        "route": "/v2/models/m/infer",
        "request": {"sha256": "0" * 64},
        "prod": prod,
        "candidate": cand,
    }
    if twin is not None:
        data["twin"] = twin
    return Pair.model_validate(data)


def v2(probs: list[float], name: str = "probabilities", label: bool = True) -> dict[str, Any]:
    outputs = [{"name": name, "shape": [1, len(probs)], "datatype": "FP32", "data": probs}]
    if label:  # a label output before the probabilities: must not be the one read
        outputs.insert(
            0, {"name": "label", "shape": [1], "datatype": "INT64", "data": [int(np.argmax(probs))]}
        )
    return {"model_name": "m", "outputs": outputs}


def both(prod_body: Any, cand_body: Any, **kw: Any) -> Pair:
    return pair(side(prod_body), side(cand_body), **kw)


# -- reading outputs ----------------------------------------------------------------------------------


def test_v2_reads_the_probability_output_shaped_by_shape() -> None:
    out = read_output(v2([0.7, 0.2, 0.1]))
    assert out is not None
    assert (out.flat, out.shape, out.name) == ([0.7, 0.2, 0.1], (1, 3), "probabilities")


def test_v2_whose_data_size_disagrees_with_shape_is_unreadable() -> None:
    body = {"outputs": [{"name": "probs", "shape": [1, 4], "data": [0.5, 0.5]}]}
    assert read_output(body) is None


@pytest.mark.parametrize(
    "body",
    [
        None,
        "text",
        3,
        {},
        {"outputs": []},
        {"outputs": [{"name": "x"}]},
        {"predictions": []},
        {"predictions": [[0.5, 0.5], [1.0]]},
        {"predictions": [{"a": "b"}]},
    ],
)
def test_bodies_without_a_readable_output_give_none(body: Any) -> None:
    assert read_output(body) is None


def test_v1_forms_read_as_rows() -> None:
    lists = read_output({"predictions": [[0.1, 0.9], [0.8, 0.2]]})
    dicts = read_output({"predictions": [{"label": 1, "probabilities": [0.1, 0.9]}]})
    scalars = read_output({"predictions": [3.5, 2.0]})
    assert lists is not None and lists.shape == (2, 2) and lists.flat == [0.1, 0.9, 0.8, 0.2]
    assert dicts is not None and dicts.shape == (1, 2) and dicts.name == "probabilities"
    assert scalars is not None and scalars.shape == (2, 1)


def test_json_pointer_reads_a_list_or_a_tensor_with_rfc6901_escapes() -> None:
    body = {"a/b": {"x~y": [[0.2, 0.8]]}, "outputs": [{"shape": [2], "data": [0.4, 0.6]}]}
    plain = read_output(body, "/a~1b/x~0y")
    tensor = read_output(body, "/outputs/0")
    assert plain is not None and plain.shape == (1, 2)
    assert tensor is not None and tensor.shape == (2,) and tensor.flat == [0.4, 0.6]
    assert read_output(body, "/outputs/7") is None
    assert read_output(body, "/missing") is None


def test_v1_v2_and_pointer_bodies_measure_the_same() -> None:
    p, q = [0.7, 0.2, 0.1], [0.6, 0.3, 0.1]
    via_v2 = measure([both(v2(p), v2(q))], AUTO)
    via_v1 = measure([both({"predictions": [p]}, {"predictions": [q]})], AUTO)
    ptr = NormalizeConfig(output_pointer="/result/scores")
    via_ptr = measure([both({"result": {"scores": p}}, {"result": {"scores": q}})], ptr)
    for m in (via_v2, via_v1, via_ptr):
        assert m.task == "classification"
        assert m.js[0] == pytest.approx(0.1001973429, rel=1e-8)
        assert m.top1_agree[0] == 1.0 and m.prod_class[0] == 0 and m.cand_class[0] == 0


# -- per-pair metrics ---------------------------------------------------------------------------------


def test_js_of_normalised_counts_matches_the_reference_value() -> None:
    p, q = np.array([500, 300, 150, 50.0]), np.array([450, 320, 170, 60.0])
    m = measure([both(v2((p / p.sum()).tolist()), v2((q / q.sum()).tolist()))], AUTO)
    assert m.js[0] == pytest.approx(0.0442920741, rel=1e-8)
    assert m.divergence[0] == m.js[0]


def test_a_batch_of_digits_like_pairs_matches_scipy_pair_by_pair() -> None:
    rng = np.random.default_rng(5)
    ps, qs = rng.dirichlet(np.ones(10), 300), rng.dirichlet(np.ones(10), 300)
    m = measure([both(v2(p.tolist()), v2(q.tolist())) for p, q in zip(ps, qs, strict=True)], AUTO)
    want = [jensenshannon(p, q, base=2) for p, q in zip(ps, qs, strict=True)]
    np.testing.assert_allclose(m.js, want, rtol=1e-8)
    np.testing.assert_array_equal(m.top1_agree, ps.argmax(1) == qs.argmax(1))
    np.testing.assert_array_equal(m.prod_class, ps.argmax(1))
    assert not m.prod_invalid.any() and not m.cand_invalid.any()


def test_empty_batch_gives_empty_arrays_and_no_aggregates() -> None:
    m = measure([], AUTO)
    assert len(m) == 0 and m.task == "unknown"
    assert fold([], m, experiment_start=START, config=AUTO) == {}


def test_all_invalid_bodies_are_flagged_on_both_sides() -> None:
    pairs = [both(None, {"nothing": 1}, rid=f"r{i}") for i in range(3)]
    m = measure(pairs, AUTO)
    assert m.task == "unknown"
    assert m.prod_invalid.all() and m.cand_invalid.all()
    assert np.isnan(m.divergence).all()
    (agg,) = fold(pairs, m, experiment_start=START, config=AUTO).values()
    assert agg.count(keys.paired(keys.INVALID, True, True)) == 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_candidate_output_is_invalid(bad: float) -> None:
    m = measure([both(v2([0.5, 0.5]), v2([bad, 0.5]))], AUTO)
    assert m.cand_invalid.tolist() == [True] and m.prod_invalid.tolist() == [False]
    assert np.isnan(m.js[0]) and m.top1_agree.tolist() != [1.0]


def test_shape_different_from_production_is_invalid() -> None:
    m = measure([both(v2([0.5, 0.5]), v2([0.2, 0.3, 0.5]))], AUTO)
    assert m.cand_invalid.tolist() == [True] and np.isnan(m.js[0])


@pytest.mark.parametrize("probs", [[0.6, 0.6], [1.2, -0.2], [0.3, 0.3]])
def test_probabilities_off_the_simplex_are_invalid(probs: list[float]) -> None:
    m = measure([both(v2([0.5, 0.5]), v2(probs))], NormalizeConfig(task="classification"))
    assert m.cand_invalid.tolist() == [True]


def test_sum_within_simplex_tol_is_valid() -> None:
    m = measure([both(v2([0.5, 0.5]), v2([0.5, 0.4995]))], AUTO)
    assert not m.cand_invalid[0]


def test_logits_are_softmaxed_for_js_and_flagged() -> None:
    lp, lq = np.array([2.0, 1.0, -1.0]), np.array([1.0, 1.5, 0.0])
    m = measure([both(v2(lp.tolist(), "logits"), v2(lq.tolist(), "logits"))], AUTO)
    sp, sq = np.exp(lp) / np.exp(lp).sum(), np.exp(lq) / np.exp(lq).sum()
    assert m.task == "classification" and m.logits.tolist() == [True]
    assert m.js[0] == pytest.approx(jensenshannon(sp, sq, base=2), rel=1e-8)
    assert m.top1_agree[0] == 0.0


def test_unnormalised_scores_not_named_logits_are_an_embedding_not_softmaxed() -> None:
    m = measure([both(v2([2.0, 1.0], "output_0"), v2([1.0, 2.0], "output_0"))], AUTO)
    assert m.task == "embedding" and not m.logits.any()
    assert m.cosine[0] == pytest.approx(0.8, rel=1e-12)
    assert m.divergence[0] == pytest.approx(0.2, rel=1e-12)


def test_label_only_classifier_compares_labels_without_js() -> None:
    lab = lambda c: {"outputs": [{"name": "label", "shape": [1], "datatype": "INT64", "data": [c]}]}  # noqa: E731
    m = measure([both(lab(3), lab(3)), both(lab(3), lab(5))], AUTO)
    assert m.task == "classification"
    assert m.top1_agree.tolist() == [1.0, 0.0] and m.cand_class.tolist() == [3, 5]
    assert np.isnan(m.js).all()


def test_regression_difference_and_tolerance_flag() -> None:
    cfg = NormalizeConfig(rtol=0.05, atol=0.1)
    pairs = [
        both({"predictions": [yp]}, {"predictions": [yc]})
        for yp, yc in [(10.0, 10.5), (10.0, 10.7), (2.0, 2.0)]
    ]
    m = measure(pairs, cfg)
    assert m.task == "regression"
    np.testing.assert_allclose(m.abs_diff, [0.5, 0.7, 0.0], rtol=1e-12)
    np.testing.assert_allclose(m.diff, [0.5, 0.7, 0.0], rtol=1e-12)
    assert m.tol_exceed.tolist() == [0.0, 1.0, 0.0]  # 0.5 ≤ 0.1 + 0.5 < 0.7
    np.testing.assert_allclose(m.divergence, [0.5 / 0.6, 0.7 / 0.6, 0.0], rtol=1e-12)


def test_constant_outputs_have_zero_divergence() -> None:
    reg = measure([both({"predictions": [1.0]}, {"predictions": [1.0]})] * 3, AUTO)
    emb = measure(
        [both({"predictions": [[0.0, 0.0, 0.0]]}, {"predictions": [[0.0, 0.0, 0.0]]})],
        NormalizeConfig(task="embedding"),
    )
    assert reg.divergence.tolist() == [0.0, 0.0, 0.0]
    assert emb.cosine.tolist() == [1.0] and emb.divergence.tolist() == [0.0]


def test_integer_id_lists_are_a_ranking_scored_by_rbo_loss() -> None:
    m = measure([both({"predictions": [[1, 2, 3]]}, {"predictions": [[1, 3, 2]]})], AUTO)
    assert m.task == "ranking"
    assert m.rbo_loss[0] == pytest.approx(1 - (0.729 + 0.1 / 0.9 * 2.034), rel=1e-9)


def test_ranking_with_repeated_or_fractional_ids_is_invalid() -> None:
    cfg = NormalizeConfig(task="ranking")
    m = measure(
        [
            both({"predictions": [[1, 2, 3]]}, {"predictions": [[1, 1, 2]]}),
            both({"predictions": [[1, 2, 3]]}, {"predictions": [[1.5, 2.0, 3.0]]}),
        ],
        cfg,
    )
    assert m.cand_invalid.tolist() == [True, True]


def test_multi_row_response_is_one_unit_averaged_over_rows() -> None:
    p = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]
    q = [[0.6, 0.3, 0.1], [0.1, 0.8, 0.1]]
    m = measure([both({"predictions": p}, {"predictions": q})], AUTO)
    want = np.mean([jensenshannon(a, b, base=2) for a, b in zip(p, q, strict=True)])
    assert m.js[0] == pytest.approx(want, rel=1e-8)
    assert m.top1_agree[0] == 0.0  # the second row disagrees, so the unit does
    assert m.prod_class[0] == 0  # the first row's class


def test_a_side_that_did_not_answer_is_not_invalid() -> None:
    m = measure(
        [
            pair(side(v2([0.5, 0.5])), side(None, "timeout", None, 250.0)),
            pair(side(v2([0.5, 0.5])), side({"error": "x"}, "ok", 503)),
        ],
        AUTO,
    )
    assert m.cand_invalid.tolist() == [False, False]


def test_a_4xx_answer_without_output_is_invalid() -> None:
    m = measure([pair(side(v2([0.5, 0.5])), side({"error": "bad"}, "ok", 400))], AUTO)
    assert m.cand_invalid.tolist() == [True]


def test_twin_metrics_compare_production_with_its_twin() -> None:
    p, t = [0.7, 0.2, 0.1], [0.6, 0.3, 0.1]
    m = measure([pair(side(v2(p)), side(v2(p)), twin=side(v2(t))), both(v2(p), v2(p))], AUTO)
    assert m.twin_js[0] == pytest.approx(0.1001973429, rel=1e-8) and np.isnan(m.twin_js[1])
    assert m.twin_top1_agree[0] == 1.0 and m.js[0] == 0.0


@pytest.mark.parametrize(
    ("field", "value"),
    [("task", "vision"), ("rtol", -1.0), ("simplex_tol", float("nan")), ("output_pointer", "a/b")],
)
def test_bad_config_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        NormalizeConfig(**{field: value})


# -- folding ------------------------------------------------------------------------------------------


def _digits_batch(n: int, seed: int = 1) -> list[Pair]:
    """Mixed outcomes over three UTC hours from the experiment's start, warm-up included."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        p, q = rng.dirichlet(np.ones(10)), rng.dirichlet(np.ones(10))
        ts = START + timedelta(seconds=float(rng.uniform(0, 3 * 3600)))
        prod = side(v2(p.tolist()), latency=float(rng.uniform(1, 20)))
        roll = rng.uniform()
        if roll < 0.1:
            cand = side(None, "timeout", None, 250.0)
        elif roll < 0.15:
            cand = side(None, "error", 500, float(rng.uniform(1, 20)))
        elif roll < 0.2:
            cand = side(None, "shed", None, None)
        elif roll < 0.25:
            cand = side({"bad": True}, latency=3.0)
        else:
            cand = side(v2(q.tolist()), latency=float(rng.uniform(1, 30)))
        twin = side(v2(p.tolist())) if roll > 0.9 else None
        pairs.append(pair(prod, cand, ts=ts, twin=twin, rid=f"r{i}"))
    return pairs


def _fold(pairs: list[Pair]) -> dict[datetime, Aggregate]:
    return fold(pairs, measure(pairs, AUTO), experiment_start=START, config=AUTO)


def _assert_same(a: dict[datetime, Aggregate], b: dict[datetime, Aggregate]) -> None:
    assert a.keys() == b.keys()
    for h in a:
        x, y = a[h], b[h]
        assert (x.counters, x.hists, x.cats) == (y.counters, y.hists, y.cats)
        assert x.moments.keys() == y.moments.keys()
        for k in x.moments:
            assert x.moments[k].n == y.moments[k].n
            assert x.moments[k].mean == pytest.approx(y.moments[k].mean, rel=1e-12)
            assert x.moments[k].m2 == pytest.approx(y.moments[k].m2, rel=1e-9, abs=1e-12)


def test_fold_of_two_halves_merged_equals_fold_of_the_whole() -> None:
    pairs = _digits_batch(400)
    whole = _fold(pairs)
    first, second = _fold(pairs[:170]), _fold(pairs[170:])
    merged = {
        h: Aggregate.merged([first.get(h, Aggregate()), second.get(h, Aggregate())]) for h in whole
    }
    _assert_same(whole, merged)


def test_fold_equals_a_recomputation_from_the_pairs_by_hand() -> None:
    pairs = _digits_batch(300, seed=2)
    m = measure(pairs, AUTO)
    aggs = fold(pairs, m, experiment_start=START, config=AUTO)
    assert sum(a.count(keys.PAIRS) for a in aggs.values()) == 300
    for hour, agg in aggs.items():
        idx = [
            i
            for i, p in enumerate(pairs)
            if p.ts.replace(minute=0, second=0, microsecond=0) == hour
        ]
        cand_out = [pairs[i].candidate.outcome.value for i in idx]
        for outcome in ("ok", "error", "timeout", "shed"):
            assert agg.count(keys.outcome("cand", outcome)) == cand_out.count(outcome)
        sent = [i for i in idx if pairs[i].candidate.outcome.value != "shed"]
        assert agg.count(keys.paired(keys.ERROR, False, True)) == sum(
            pairs[i].candidate.is_error for i in sent
        )
        assert agg.count(keys.paired(keys.TIMEOUT, False, True)) == sum(
            pairs[i].candidate.outcome.value == "timeout" for i in sent
        )
        ok = [
            i
            for i in sent
            if pairs[i].candidate.outcome.value == "ok" and pairs[i].candidate.status == 200
        ]
        assert agg.count(keys.paired(keys.INVALID, False, True)) == sum(
            m.cand_invalid[i] for i in ok
        )
        valid = [i for i in ok if not m.cand_invalid[i]]
        assert agg.count(keys.CLS_N) == len(valid)
        assert agg.count(keys.CLS_AGREE) == int(sum(m.top1_agree[i] for i in valid))
        assert agg.count(keys.JS_TAIL) == sum(m.js[i] > 0.1 for i in valid)
        js = agg.moment(keys.JS)
        want = Moments.of(m.js[i] for i in valid)
        assert js.n == want.n and js.mean == pytest.approx(want.mean, rel=1e-12)
        assert sum(agg.cat(keys.CONFUSION).values()) == len(valid)
        assert agg.cat(keys.CLASS_CAND) == {
            str(c): int(n)
            for c, n in zip(*np.unique(m.cand_class[valid], return_counts=True), strict=True)
        }
        twins = [i for i in idx if pairs[i].twin is not None]
        assert agg.count(keys.TWIN_CLS_N) == len(twins) == agg.count(keys.TWIN_CLS_AGREE)
        assert agg.count(keys.outcome("twin", "ok")) == len(twins)


def test_latency_skips_the_warm_up_but_counts_do_not() -> None:
    early = [
        pair(
            side(v2([0.5, 0.5]), latency=4.0),
            side(None, "timeout", None, 250.0),
            ts=START + timedelta(minutes=10),
            rid=f"e{i}",
        )
        for i in range(3)
    ]
    late = [
        pair(
            side(v2([0.5, 0.5]), latency=12.3),
            side(None, "timeout", None, 250.0),
            ts=WARM + timedelta(minutes=1),
            rid=f"l{i}",
        )
        for i in range(2)
    ]
    (agg,) = _fold(early + late).values()
    assert agg.count(keys.PAIRS) == 5 and agg.count(keys.outcome("cand", "timeout")) == 5
    assert agg.count(keys.paired(keys.TIMEOUT, False, True)) == 5
    assert agg.hist(keys.latency("prod")) == {ddsketch_key(12.3): 2}
    assert agg.hist(keys.latency("cand")) == {}
    assert agg.count(keys.censored("cand")) == 2
    assert agg.moment("lat.cand.deadline") == Moments(2, 250.0, 0.0)


def test_all_timeouts_are_censored_not_invalid() -> None:
    pairs = [
        pair(side(None, "timeout", None, 100.0), side(None, "timeout", None, 100.0), rid=f"r{i}")
        for i in range(4)
    ]
    m = measure(pairs, AUTO)
    assert not m.prod_invalid.any() and not m.cand_invalid.any()
    (agg,) = fold(pairs, m, experiment_start=START, config=AUTO).values()
    assert agg.count(keys.paired(keys.TIMEOUT, True, True)) == 4
    assert agg.count(keys.censored("prod")) == 4 and agg.count(keys.censored("cand")) == 4
    assert agg.hists == {} and agg.count(keys.CLS_N) == 0
    assert keys.paired(keys.INVALID, False, False) not in agg.counters


def test_a_production_timeout_is_censored_at_its_deadline_like_the_candidates() -> None:
    pairs = [
        pair(side(None, "timeout", None, 800.0), side(v2([0.5, 0.5]), latency=4.0), rid="a"),
        pair(side(None, "timeout", None, 800.0), side(v2([0.5, 0.5]), latency=4.0), rid="b"),
        pair(side(v2([0.5, 0.5]), latency=3.0), side(v2([0.5, 0.5]), latency=4.0), rid="c"),
    ]
    (agg,) = _fold(pairs).values()
    assert agg.count(keys.censored("prod")) == 2
    assert agg.hist(keys.latency("prod")) == {ddsketch_key(3.0): 1}
    assert agg.moment("lat.prod.deadline") == Moments(2, 800.0, 0.0)
    assert agg.count(keys.paired(keys.TIMEOUT, True, False)) == 2


def test_error_with_a_status_has_a_latency_and_a_refused_connection_has_none() -> None:
    pairs = [
        pair(side(v2([0.5, 0.5]), latency=3.0), side(None, "error", 503, 7.0), rid="a"),
        pair(side(v2([0.5, 0.5]), latency=3.0), side(None, "error", None, 1.0), rid="b"),
    ]
    (agg,) = _fold(pairs).values()
    assert agg.hist(keys.latency("cand")) == {ddsketch_key(7.0): 1}
    assert agg.count(keys.paired(keys.ERROR, False, True)) == 2


def test_pairs_fold_into_their_utc_hour_across_a_boundary() -> None:
    tz = datetime(2026, 11, 22, 10, 59, 59, 999000, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=2))
    )
    pairs = [
        both(v2([0.5, 0.5]), v2([0.5, 0.5]), ts=tz, rid="a"),
        both(v2([0.5, 0.5]), v2([0.5, 0.5]), ts=datetime(2026, 11, 22, 11, 0, tzinfo=UTC), rid="b"),
        both(
            v2([0.5, 0.5]), v2([0.5, 0.5]), ts=datetime(2026, 11, 22, 11, 30, tzinfo=UTC), rid="c"
        ),
    ]
    aggs = _fold(pairs)
    assert list(aggs) == [
        datetime(2026, 11, 22, 10, tzinfo=UTC),
        datetime(2026, 11, 22, 11, tzinfo=UTC),
    ]
    assert [a.count(keys.PAIRS) for a in aggs.values()] == [1, 2]
    assert all(h.tzinfo is UTC for h in aggs)


def test_regression_embedding_and_ranking_fold_into_their_keys() -> None:
    reg = [
        both({"predictions": [y]}, {"predictions": [y + d]}, rid=f"r{i}")
        for i, (y, d) in enumerate([(1.0, 0.0), (2.0, 0.5), (3.0, -0.1)])
    ]
    (agg,) = _fold(reg).values()
    assert agg.count(keys.REG_N) == 3 and agg.count(keys.REG_TOL_EXCEED) == 1  # 0.5 > 0.05·2
    assert agg.moment(keys.REG_DIFF).mean == pytest.approx(0.4 / 3, rel=1e-12)
    assert agg.moment(keys.REG_PROD).mean == pytest.approx(2.0, rel=1e-12)
    emb = [
        both({"predictions": [[2.0, 0.0]]}, {"predictions": [[c, s]]}, rid=f"e{i}")
        for i, (c, s) in enumerate([(3.0, 0.0), (1.2, 1.6)])  # [2, 0] is no simplex
    ]
    (agg,) = _fold(emb).values()
    assert agg.count(keys.EMB_N) == 2 and agg.count(keys.EMB_COS_TAIL) == 1
    assert agg.moment(keys.EMB_COS).mean == pytest.approx(0.8, rel=1e-12)
    rank = [both({"predictions": [[1, 2, 3]]}, {"predictions": [[1, 2, 3]]}, rid="k")]
    (agg,) = _fold(rank).values()
    assert agg.moment(keys.RANK_RBO_LOSS).n == 1 and agg.moment(
        keys.RANK_RBO_LOSS
    ).mean == pytest.approx(0.0, abs=1e-12)


def test_fold_refuses_metrics_of_another_batch() -> None:
    pairs = _digits_batch(3)
    with pytest.raises(ValueError, match="metrics"):
        fold(pairs, measure(pairs[:2], AUTO), experiment_start=START, config=AUTO)


def test_vectorised_ddsketch_keys_equal_the_scalar_key() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([[1e-6, 1e-3, 12.3, 250.0, 1.0], rng.lognormal(2, 2, 5000)])
    assert ddsketch_keys(values).tolist() == [ddsketch_key(float(v)) for v in values]


def test_metrics_type_is_exported() -> None:
    assert isinstance(measure([], AUTO), BatchMetrics)


# -- any JSON at all ------------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["probabilities", "logits", "label", "x"]),
)
_numbers = st.lists(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5)),
    min_size=1,
    max_size=6,
)
_tensor = st.builds(
    lambda name, data, rows: {
        "outputs": [{"name": name, "shape": [rows, len(data) // rows], "data": data}]
    },
    st.sampled_from(["probabilities", "logits", "label", "out"]),
    _numbers,
    st.sampled_from([1, 2]),
)
_v1 = st.builds(lambda rows: {"predictions": rows}, st.lists(_numbers, min_size=1, max_size=3))
_any_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["outputs", "predictions", "name", "shape", "data", "scores"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)
_json = st.one_of(_any_json, _tensor, _v1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bodies=st.lists(st.tuples(_json, _json), min_size=1, max_size=4),
    task=st.sampled_from(["auto", "classification", "regression", "embedding", "ranking"]),
    pointer=st.sampled_from([None, "/outputs/0", "/predictions", "/data"]),
)
def test_any_json_body_measures_and_folds_without_raising(
    bodies: list[tuple[Any, Any]], task: str, pointer: str | None
) -> None:
    cfg = NormalizeConfig(task=task, output_pointer=pointer)
    pairs = [both(p, c, rid=f"r{i}") for i, (p, c) in enumerate(bodies)]
    m = measure(pairs, cfg)
    assert len(m) == len(pairs)
    both_valid = ~m.prod_invalid & ~m.cand_invalid
    assert np.isnan(m.divergence[~both_valid]).all()
    (agg,) = fold(pairs, m, experiment_start=START, config=cfg).values()
    assert agg.count(keys.PAIRS) == len(pairs)


def test_overflowing_outputs_neither_raise_nor_poison_the_aggregates() -> None:
    big = [
        both({"predictions": [[1e300, 1e300]]}, {"predictions": [[1e300, -1e300]]}, rid="a"),
        both({"predictions": [[1.0, 2.0]]}, {"predictions": [[2.0, 1.0]]}, rid="b"),
    ]
    (agg,) = _fold(big).values()
    assert agg.count(keys.EMB_N) == 1
    assert agg.moment(keys.EMB_COS).mean == pytest.approx(0.8, rel=1e-12)


# -- the batch reader reads as the one-body reader ----------------------------------------------------

_JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=True)
    | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
_TENSOR = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["probabilities", "logits", "label", "emb", 7]),
        "shape": st.sampled_from([[1, 3], [3], [2, 2], [1, 4], "3", [[1], 3], [-1, 3]]),
        "data": st.one_of(
            st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=4),
            st.lists(st.integers(0, 3), min_size=1, max_size=4),
            st.lists(st.lists(st.floats(0, 1), min_size=2, max_size=2), min_size=1, max_size=2),
            _JSONISH,
        ),
    }
)
_BODY = st.one_of(
    st.builds(lambda ts: {"outputs": ts}, st.lists(_TENSOR | _JSONISH, min_size=0, max_size=2)),
    st.builds(lambda p: {"predictions": p}, _JSONISH),
    _JSONISH,
)


def _v2(shape: Any, data: Any, name: Any = "probabilities") -> dict[str, Any]:
    return {"outputs": [{"name": name, "shape": shape, "data": data}]}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_BODY, max_size=8))
@example([_v2([1, 3], [0.1, 0.2, 0.7]), _v2([1, 3], [0.1, 0.2, 0.3, 0.4]), _v2([1, 3], [0.5, 0.5])])
@example([_v2([3], [0.1, 2, 0.7], name=5), _v2([[1], 3], [0.1, 0.2, 0.7]), _v2([-1, 3], [0.1])])
@example([_v2("3", [0.1, 0.2, 0.7]), _v2([1, 3], [1, 0, 0]), _v2([1, 2], [[0.4, 0.6]])])
def test_read_outputs_reads_every_body_as_read_output(bodies: list[Any]) -> None:
    assert repr(read_outputs(bodies)) == repr([read_output(b) for b in bodies])  # NaN-safe equality


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TENSOR, min_size=1, max_size=8))
def test_task_signatures_of_a_sample_match_one_by_one(tensors: list[Any]) -> None:
    outs = [o for o in read_outputs([{"outputs": [t]} for t in tensors]) if o is not None]
    assert _signatures(outs, 1e-3) == [_signature(o, 1e-3) for o in outs]


# -- the OIP binary tensor extension ------------------------------------------------------------

OIP_DTYPES = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}  # fmt: skip


def binary_body(tensors: dict[str, tuple[str, np.ndarray]], **extra: Any) -> tuple[bytes, int]:
    """An OIP answer with every tensor binary: JSON header, then the raw little-endian bytes."""
    outputs, blobs = [], []
    for name, (datatype, arr) in tensors.items():
        raw = np.ascontiguousarray(arr, dtype=np.dtype(OIP_DTYPES[datatype])).tobytes()
        outputs.append({"name": name, "datatype": datatype, "shape": list(arr.shape),
                        "parameters": {"binary_data_size": len(raw)}})  # fmt: skip
        blobs.append(raw)
    header = json.dumps({"model_name": "m", "outputs": outputs, **extra}).encode()
    return header + b"".join(blobs), len(header)


def binary_side(raw: bytes, header_length: int | None = None) -> dict[str, Any]:
    binary: dict[str, Any] = {"base64": base64.b64encode(raw).decode()}
    if header_length is not None:
        binary["header_length"] = header_length
    return {**side(None), "body_bytes": len(raw), "binary": binary}


@pytest.mark.parametrize("datatype", sorted(OIP_DTYPES))
@pytest.mark.parametrize("known_length", [True, False])
def test_binary_tensors_decode_to_their_json_values_for_every_datatype(
    datatype: str, known_length: bool
) -> None:
    rng = np.random.default_rng(7)
    arr = (rng.uniform(0, 100, (2, 3)) > 50) if datatype == "BOOL" else rng.uniform(0, 100, (2, 3))
    arr = arr.astype(np.dtype(OIP_DTYPES[datatype]))
    raw, header = binary_body({"out": (datatype, arr), "label": ("INT64", np.array([4, 2]))})
    doc = decode_binary(raw, header if known_length else None)
    assert doc["outputs"][0]["data"] == arr.ravel().tolist()
    assert doc["outputs"][1]["data"] == [4, 2]
    assert doc["model_name"] == "m"


def test_binary_bytes_tensors_decode_length_prefixed_strings() -> None:
    items = [b"cat", b"", "dé".encode()]
    blob = b"".join(len(b).to_bytes(4, "little") + b for b in items)
    header = json.dumps({"outputs": [{"name": "s", "datatype": "BYTES", "shape": [3],
                         "parameters": {"binary_data_size": len(blob)}}]}).encode()  # fmt: skip
    assert decode_binary(header + blob)["outputs"][0]["data"] == ["cat", "", "dé"]
    # a length running past the tensor is no data, not an exception
    bad = header.replace(b'"shape": [3]', b'"shape": [1]') + (99).to_bytes(4, "little")
    assert decode_binary(bad) is None


def test_a_tensor_of_the_wrong_element_count_or_datatype_has_no_data() -> None:
    raw, _ = binary_body({"p": ("FP32", np.zeros((1, 4)))})
    wrong_shape = raw.replace(b'"shape": [1, 4]', b'"shape": [1, 3]')
    assert "data" not in decode_binary(wrong_shape)["outputs"][0]
    bf16 = raw.replace(b'"FP32"', b'"BF16"')
    assert "data" not in decode_binary(bf16)["outputs"][0]
    assert read_output(decode_binary(bf16)) is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda raw, n: raw + b"\x00",  # a byte that belongs to no tensor
        lambda raw, n: raw[:-1],  # a tensor cut short
        lambda raw, n: raw[: n - 1] + raw[n:],  # the header's closing brace gone
        lambda raw, n: b"\x00" + raw,  # not a JSON header at all
        lambda raw, n: raw.replace(b'"binary_data_size": 16', b'"binary_data_size": -16'),
        lambda raw, n: raw.replace(b'"binary_data_size": 16', b'"binary_data_size": "16"'),
    ],
)
def test_a_malformed_binary_body_decodes_to_nothing(mangle: Any) -> None:
    raw, header = binary_body({"p": ("FP32", np.full((1, 4), 0.25))})
    assert decode_binary(raw) is not None
    assert decode_binary(mangle(raw, header)) is None


def test_a_binary_answer_is_compared_like_its_json_twin() -> None:
    probs = [0.7, 0.2, 0.1]
    raw, header = binary_body({"probabilities": ("FP32", np.array([probs]))})
    flipped, _ = binary_body({"probabilities": ("FP32", np.array([[0.1, 0.2, 0.7]]))})
    pairs = [
        pair(side(v2(probs)), binary_side(raw)),  # JSON production, binary candidate
        pair(binary_side(raw, header), binary_side(raw)),  # both binary
        pair(binary_side(raw), binary_side(flipped)),  # binary, and they disagree
    ]
    m = measure(pairs, AUTO)
    assert m.task == "classification"
    assert not m.prod_invalid.any() and not m.cand_invalid.any()
    assert m.top1_agree.tolist() == [1.0, 1.0, 0.0]
    assert m.js[:2] == pytest.approx([0.0, 0.0], abs=1e-6)
    agg = fold(pairs, m, experiment_start=START, config=AUTO)[WARM.replace(minute=0)]
    assert agg.count(keys.CLS_N) == 3 and agg.count(keys.CLS_AGREE) == 2


def test_an_undecodable_binary_answer_is_invalid() -> None:
    raw, _ = binary_body({"probabilities": ("FP32", np.array([[0.7, 0.2, 0.1]]))})
    m = measure([pair(side(v2([0.7, 0.2, 0.1])), binary_side(raw[:-2]))], AUTO)
    assert m.cand_invalid.tolist() == [True]


def test_serving_binary_answers_decode_to_what_it_computed() -> None:
    from serving.model import TensorSpec
    from serving.oip import encode_response

    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]], np.float32)
    labels = np.array([0, 2], np.int64)
    specs = {
        "label": TensorSpec("label", "INT64", (-1,), np.dtype("int64")),
        "probabilities": TensorSpec("probabilities", "FP32", (-1, 3), np.dtype("float32")),
    }
    body, header = encode_response(
        model_name="m", model_version="1", request_id=None,
        outputs={"label": labels, "probabilities": probs}, specs=specs, wanted=None,
        binary=frozenset({"label", "probabilities"}),
    )  # fmt: skip
    assert header is not None
    for length in (header, None):
        doc = decode_binary(body, length)
        out = read_output(doc)
        assert out is not None and out.name == "probabilities" and out.shape == (2, 3)
        np.testing.assert_array_equal(np.array(out.flat, np.float32), probs.ravel())


def test_blank_padding_after_a_binary_header_is_allowed_only_without_a_known_length() -> None:
    raw, header = binary_body({"p": ("FP32", np.full((1, 4), 0.25))})
    padded = raw[:header] + b"  \n" + raw[header:]
    assert decode_binary(padded)["outputs"][0]["data"] == [0.25] * 4
    assert decode_binary(padded, header) is None
    assert decode_binary(padded, header + 3)["outputs"][0]["data"] == [0.25] * 4
    assert decode_binary(raw[:header] + b"xx" + raw[header:]) is None
