"""Pure, vectorised kernels comparing production's and the candidate's outputs row by row.

Every function takes arrays shaped ``(pairs, rows, width)`` — one output per pair, each with ``rows``
rows of ``width`` numbers — and returns one value per *row* ``(pairs, rows)``; the caller averages
over rows so that a multi-row response counts as one unit. No I/O, no Python loops over pairs.

* :func:`js_distance` — Jensen–Shannon *distance* (the square root of the divergence), base 2, equal
  to ``scipy.spatial.distance.jensenshannon(p, q, base=2)``: 0 for identical distributions, 1 for
  disjoint ones. ``p=[.7,.2,.1], q=[.6,.3,.1]`` → 0.1001973429.
* :func:`cosine` — cosine similarity; two zero vectors are identical (1), one zero vector is
  orthogonal to anything (0), so a collapsed embedding reads as maximally divergent, not NaN.
* :func:`rbo_ext` — extrapolated rank-biased overlap (Webber, Moffat & Zobel 2010, eq. 30) of two
  equal-length rankings of distinct ids, persistence ``p`` (0.9: the top 10 carry ~86% of the weight).
* :func:`softmax` — turns logits into probabilities so JS can compare them.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.special import rel_entr

__all__ = ["cosine", "js_distance", "on_simplex", "rbo_ext", "softmax"]

F64 = NDArray[np.float64]


def softmax(logits: F64) -> F64:
    """Softmax over the last axis, shifted by the row maximum so large logits cannot overflow."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    out: F64 = z / z.sum(axis=-1, keepdims=True)
    return out


def on_simplex(probs: F64, tol: float) -> NDArray[np.bool_]:
    """Per row: every entry ≥ 0 and the row sums to 1 within ``tol`` (float32 softmax drifts ~1e-7)."""
    with np.errstate(over="ignore", invalid="ignore"):  # a row near float max sums to inf: not ok
        ok: NDArray[np.bool_] = (probs >= 0).all(axis=-1) & (
            np.abs(probs.sum(axis=-1) - 1.0) <= tol
        )
    return ok


def js_distance(p: F64, q: F64) -> F64:
    """Jensen–Shannon distance, base 2, per row; inputs are renormalised to sum 1 as scipy does."""
    p = p / p.sum(axis=-1, keepdims=True)
    q = q / q.sum(axis=-1, keepdims=True)
    m = (p + q) / 2.0
    # rel_entr(x, y) = x·ln(x/y) with 0·ln 0 = 0: the same terms scipy sums.
    js = (rel_entr(p, m).sum(axis=-1) + rel_entr(q, m).sum(axis=-1)) / 2.0
    # Rounding can leave −1e-17 for identical rows; the distance of those is exactly 0.
    out: F64 = np.sqrt(np.maximum(js, 0.0) / np.log(2.0))
    return out


def cosine(a: F64, b: F64) -> F64:
    """Cosine similarity per row, with the zero-vector conventions of the module docstring."""
    dot = (a * b).sum(axis=-1)
    na = np.sqrt((a * a).sum(axis=-1))
    nb = np.sqrt((b * b).sum(axis=-1))
    denom = na * nb
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), 0.0)
    cos = np.where((na == 0) & (nb == 0), 1.0, cos)
    out: F64 = np.clip(cos, -1.0, 1.0)
    return out


def rbo_ext(s: F64, t: F64, p: float = 0.9) -> F64:
    """Extrapolated RBO per row of two equal-length rankings (ids as numbers, distinct per row).

    With ``X_d`` the overlap of the two top-``d`` prefixes and ``k`` the list length::

        RBO_ext = X_k/k · p^k + (1 − p)/p · Σ_{d=1..k} X_d/d · p^d

    An id at position ``i`` in ``s`` and ``j`` in ``t`` joins the overlap from depth ``max(i, j) + 1``
    on, so ``X_d`` is a cumulative count of those depths — an ``O(k²)`` comparison per row that numpy
    does for the whole batch at once. Identical rankings give 1, disjoint ones 0.
    """
    k = s.shape[-1]
    if k == 0:
        return np.ones(s.shape[:-1])
    eq = s[..., :, None] == t[..., None, :]  # (..., i, j)
    found = eq.any(axis=-1)
    j = eq.argmax(axis=-1)
    i = np.arange(k)
    depth = np.where(
        found, np.maximum(i, j), k
    )  # 0-based depth at which the id is shared; k: never
    counts = (depth[..., None] == np.arange(k)).sum(axis=-2)  # ids that join at each depth
    overlap = np.cumsum(counts, axis=-1).astype(np.float64)  # X_1 .. X_k
    d = np.arange(1, k + 1, dtype=np.float64)
    weights = p**d
    out: F64 = overlap[..., -1] / k * p**k + (1.0 - p) / p * (overlap / d * weights).sum(axis=-1)
    return out
