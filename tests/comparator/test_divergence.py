"""The metric kernels against scipy and against a plain-Python reading of their definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cosine as scipy_cosine_distance
from scipy.spatial.distance import jensenshannon
from scipy.special import softmax as scipy_softmax

from comparator.measure.divergence import cosine, js_distance, on_simplex, rbo_ext, softmax

RTOL = 1e-8


@pytest.mark.parametrize(
    ("p", "q", "expected"),
    [
        ([0.7, 0.2, 0.1], [0.6, 0.3, 0.1], 0.1001973429),
        ([500, 300, 150, 50], [450, 320, 170, 60], 0.0442920741),  # counts, normalised inside
    ],
)
def test_js_distance_matches_reference_values(
    p: list[float], q: list[float], expected: float
) -> None:
    pa, qa = np.array([p], float), np.array([q], float)
    pa, qa = pa / pa.sum(), qa / qa.sum()
    got = js_distance(pa, qa)
    assert got.shape == (1,)
    assert got[0] == pytest.approx(expected, rel=1e-9)
    assert got[0] == pytest.approx(jensenshannon(pa[0], qa[0], base=2), rel=RTOL)


def test_js_distance_equals_scipy_over_a_random_batch_with_zeros() -> None:
    rng = np.random.default_rng(7)
    p = rng.dirichlet(np.full(10, 0.3), size=(200, 2))
    q = rng.dirichlet(np.full(10, 0.3), size=(200, 2))
    p[:20, :, 3] = 0.0  # exact zeros exercise 0·log 0
    p[:20] /= p[:20].sum(axis=-1, keepdims=True)
    got = js_distance(p, q)
    want = np.array(
        [[jensenshannon(p[i, r], q[i, r], base=2) for r in range(2)] for i in range(200)]
    )
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-15)


def test_js_distance_is_zero_for_identical_and_one_for_disjoint_rows() -> None:
    p = np.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    q = np.array([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_allclose(js_distance(p, q), [1.0, 0.0], atol=1e-12)


def test_cosine_equals_scipy_and_handles_zero_vectors() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 16)), rng.normal(size=(50, 16))
    want = [1.0 - scipy_cosine_distance(a[i], b[i]) for i in range(50)]
    np.testing.assert_allclose(cosine(a, b), want, rtol=RTOL)
    z = np.zeros((1, 4))
    assert cosine(z, z)[0] == 1.0  # both collapsed: identical
    assert cosine(z, np.ones((1, 4)))[0] == 0.0  # one collapsed: no similarity, not NaN


def _rbo_ext_by_definition(s: list[int], t: list[int], p: float) -> float:
    k = len(s)
    total = 0.0
    for d in range(1, k + 1):
        total += len(set(s[:d]) & set(t[:d])) / d * p**d
    x_k = len(set(s) & set(t))
    return x_k / k * p**k + (1 - p) / p * total


def test_rbo_ext_matches_its_definition_on_random_rankings() -> None:
    rng = np.random.default_rng(11)
    s = np.array([rng.permutation(30)[:12] for _ in range(100)], float)
    t = np.array([rng.permutation(30)[:12] for _ in range(100)], float)
    want = [_rbo_ext_by_definition(list(s[i]), list(t[i]), 0.9) for i in range(100)]
    np.testing.assert_allclose(rbo_ext(s, t, 0.9), want, rtol=RTOL)


def test_rbo_ext_of_a_small_swap_by_hand() -> None:
    # X = 1, 1, 3 at depths 1..3: 3/3·0.9³ + (0.1/0.9)(0.9 + 0.81/2 + 0.729) = 0.955
    got = rbo_ext(np.array([[1.0, 2, 3]]), np.array([[1.0, 3, 2]]), 0.9)[0]
    assert got == pytest.approx(0.729 + 0.1 / 0.9 * (0.9 + 0.405 + 0.729), rel=RTOL)


def test_rbo_ext_is_one_for_identical_and_zero_for_disjoint_rankings() -> None:
    s = np.array([[5.0, 1, 9, 2]])
    assert rbo_ext(s, s)[0] == pytest.approx(1.0, rel=1e-12)
    assert rbo_ext(s, s + 100)[0] == 0.0


def test_softmax_matches_scipy_and_survives_large_logits() -> None:
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 1001.0, 999.0]])
    np.testing.assert_allclose(softmax(x), scipy_softmax(x, axis=-1), rtol=RTOL)


def test_on_simplex_needs_non_negative_rows_summing_to_one() -> None:
    rows = np.array([[0.5, 0.5], [0.6, 0.5], [1.2, -0.2], [0.5, 0.4995]])
    assert on_simplex(rows, 1e-3).tolist() == [True, False, False, True]


def test_rows_near_float_max_are_off_the_simplex_without_a_warning() -> None:
    import warnings

    import numpy as np

    from comparator.measure.divergence import on_simplex

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not on_simplex(np.array([[8.988e307, 8.988e307]]), 1e-3).any()
