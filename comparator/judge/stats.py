"""Pure statistics for the verdict: confidence sequences, quantile bands, distances, trends
and multiple testing (the tests reported beside a verdict are :mod:`comparator.judge.diagnostics`).

Every function takes numbers or numpy arrays and returns a frozen result; nothing here reads a store,
a clock or a global. ``checks.py`` turns merged aggregates into these inputs and ``verdict.py`` decides.

Confidence sequences (CS) are the always-valid intervals of Waudby-Smith et al. (asymptotic form)::

    v̄ ± s · M(n),   M(n) = sqrt( 2(nρ²+1)/(n²ρ²) · ln( sqrt(nρ²+1)/α ) )
    ρ² = (−W₋₁(−α²·e^{α²−1}) − 1) / n_opt

``ρ`` tunes where the sequence is tightest (at ``n_opt`` units); any ρ keeps the guarantee that the
whole sequence covers the true value with probability ≥ 1 − α, however often one looks. That is what
makes hourly looks safe where a fixed z-test would raise a false alarm about a quarter of the time.

Latency quantiles come from merged DDSketch histograms (keys ``ceil(log_γ x)``, see
:mod:`comparator.measure.aggregates`). Timeouts are right-censored latencies: they rank above every completed
call, so a p-quantile is identified only while the timeout rate stays below 1 − p.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from comparator.measure.aggregates import GAMMA, ddsketch_value

__all__ = [
    "CS",
    "QuantileBand",
    "TheilSen",
    "benjamini_hochberg",
    "bonferroni",
    "cs_half_width",
    "cs_multiplier",
    "jensen_shannon",
    "kl_divergence",
    "mean_cs",
    "n_to_resolve",
    "paired_rate_cs",
    "proportion_cs",
    "psi",
    "quantile_band",
    "quantile_ratio_cs",
    "rho2",
    "sample_quantile_cs",
    "theil_sen",
]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class CS:
    """A confidence-sequence interval around an estimate, computed at ``n`` units."""

    estimate: float
    lower: float
    upper: float
    n: int
    s: float = 0.0

    @property
    def half_width(self) -> float:
        return (self.upper - self.lower) / 2.0


@dataclass(frozen=True, slots=True)
class QuantileBand:
    """Bounds of a p-quantile read from a histogram with censored tail.

    ``estimate`` is the bucket value at rank ``n·p`` (``inf`` when the rank falls among timeouts);
    ``lower``/``upper`` are bucket edges at ranks ``n(p ∓ m)``; a bound among the timeouts is the
    deadline (lower) or ``inf`` (upper). ``identifiable`` is False when the timeout share ≥ 1 − p.
    """

    p: float
    estimate: float
    lower: float
    upper: float
    n: int
    n_censored: int
    identifiable: bool


@dataclass(frozen=True, slots=True)
class TheilSen:
    slope: float
    intercept: float
    low_slope: float
    high_slope: float


# -- confidence sequences ------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def rho2(alpha: float, n_opt: float) -> float:
    """ρ² that makes the CS tightest at ``n_opt`` units (VERDICT.md: 8.2091635764e-05 at α=.05, 1e5)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_opt <= 0:
        raise ValueError(f"n_opt must be > 0, got {n_opt}")
    a2 = alpha * alpha
    w = special.lambertw(-a2 * math.exp(a2 - 1.0), -1).real
    return float((-w - 1.0) / n_opt)


def cs_multiplier(n: float, alpha: float, n_opt: float) -> float:
    """M(n): the half-width of the CS for a unit standard deviation after ``n`` units."""
    if n <= 0:
        return math.inf
    r2 = rho2(alpha, n_opt)
    nr = n * r2 + 1.0
    return math.sqrt(2.0 * nr / (n * n * r2) * math.log(math.sqrt(nr) / alpha))


def cs_half_width(s: float, n: float, alpha: float, n_opt: float) -> float:
    """s · M(n)."""
    return s * cs_multiplier(n, alpha, n_opt)


def mean_cs(mean: float, variance: float, n: int, alpha: float, n_opt: float) -> CS:
    """CS for a mean from its moments (population variance, the plug-in s²)."""
    if n <= 0:
        return CS(math.nan, -math.inf, math.inf, 0, math.nan)
    s = math.sqrt(max(variance, 0.0))
    h = cs_half_width(s, n, alpha, n_opt)
    return CS(mean, mean - h, mean + h, n, s)


def proportion_cs(k: int, n: int, alpha: float, n_opt: float, pseudo: float = 1.0) -> CS:
    """CS for a proportion k/n, clipped to [0, 1].

    s² = p̃(1−p̃) with the add-one (Laplace) estimate p̃ = (k + pseudo)/(n + 2·pseudo), so a sample
    with few events, or none, does not claim a narrow interval: 0 of 1 000 is not proof that the
    rate is 0, and a plug-in s² = p̂(1−p̂) loses the CS's level when events are rare (VERDICT.md).
    """
    if n <= 0:
        return CS(math.nan, 0.0, 1.0, 0, math.nan)
    p = k / n
    pt = (k + pseudo) / (n + 2.0 * pseudo)
    s = math.sqrt(max(pt * (1.0 - pt), 1.0 / n if pseudo <= 0 else 0.0))
    h = cs_half_width(s, n, alpha, n_opt)
    return CS(p, max(0.0, p - h), min(1.0, p + h), n, s)


def paired_rate_cs(
    n00: int, n01: int, n10: int, n11: int, alpha: float, n_opt: float, pseudo: float = 1.0
) -> CS:
    """CS for the paired difference of bad rates, candidate − production.

    Per request v = 1[cand bad] − 1[prod bad] ∈ {−1, 0, 1}; mean (n01 − n10)/n and
    s² = (n01 + n10)/n − mean² (McNemar's discordant cells carry all the information). With
    ``pseudo`` (default 1: add-one smoothing) each discordant count gets ``pseudo`` extra events in
    s² only, never in the mean: with few events the plug-in s² is too small as often as not and the
    CS loses its level (candidate-only errors at 1.2·δ and 10–24k pairs a day: false PASS 2.3%
    against α 0.56% with s² floored at 1/n, 0.3% with add-one; ``tests/comparator/test_stats.py``).
    ``pseudo=0`` is the plain plug-in of VERDICT.md's reference values (s² floored at 1/n).
    """
    n = n00 + n01 + n10 + n11
    if n <= 0:
        return CS(math.nan, -1.0, 1.0, 0, math.nan)
    mean = (n01 - n10) / n
    var = (n01 + n10 + 2.0 * pseudo) / n - mean * mean
    s = math.sqrt(max(var, 1.0 / n if pseudo <= 0 else 0.0))
    h = cs_half_width(s, n, alpha, n_opt)
    return CS(mean, max(-1.0, mean - h), min(1.0, mean + h), n, s)


def n_to_resolve(s: float, gap: float, alpha: float, n_opt: float, n_now: int) -> float | None:
    """Smallest n* ≥ n_now with s·M(n*) ≤ |θ̂ − δ| (bisection on log n); None if never within 1e12.

    M(n) is decreasing for n beyond a few units, so the first n where the half-width shrinks below the
    gap is where the check would resolve if the estimate stayed put.
    """
    if gap <= 0 or not math.isfinite(s):
        return None
    if s == 0.0:
        return float(n_now)
    lo, hi = max(float(n_now), 1.0), 1e12
    if cs_half_width(s, lo, alpha, n_opt) <= gap:
        return lo
    if cs_half_width(s, hi, alpha, n_opt) > gap:
        return None
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        if cs_half_width(s, mid, alpha, n_opt) <= gap:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1.001:
            break
    return hi


def sample_quantile_cs(
    values: Sequence[float] | FloatArray, p: float, alpha: float, n_opt: float
) -> CS:
    """CS of the p-quantile of a small sample by rank band, as :func:`quantile_band` does.

    The bounds are the order statistics at ranks n(p ∓ m), m = sqrt(p(1−p))·M(n); a rank below 1
    is −∞ and one above n is +∞. Used on hourly memory medians, a few dozen values.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = int(x.size)
    if n == 0:
        return CS(math.nan, -math.inf, math.inf, 0, math.nan)
    m = math.sqrt(p * (1.0 - p)) * cs_multiplier(n, alpha, n_opt)
    r_lo, r_hi = math.floor(n * (p - m)), math.ceil(n * (p + m))
    lower = -math.inf if r_lo < 1 else float(x[r_lo - 1])
    upper = math.inf if r_hi > n else float(x[r_hi - 1])
    return CS(float(np.quantile(x, p)), lower, upper, n)


# -- quantiles from a censored histogram ---------------------------------------------------------
def _rank_value(keys: npt.NDArray[np.int64], cum: npt.NDArray[np.int64], rank: int) -> int:
    """Bucket key holding the 1-based ``rank``-th completed value."""
    return int(keys[int(np.searchsorted(cum, rank, side="left"))])


def quantile_band(
    hist: Mapping[int, int],
    n_censored: int,
    deadline: float,
    p: float,
    alpha: float,
    n_opt: float,
) -> QuantileBand:
    """CS of the p-quantile by rank band: ranks n(p ∓ m), m = sqrt(p(1−p))·M(n).

    ``hist`` maps DDSketch keys to counts of completed calls; ``n_censored`` timeouts count as values
    ≥ ``deadline`` ranked above all of them. Bounds are bucket edges γ^(k−1) and γ^k, which widens the
    band by the sketch's 1% relative error.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    raw_keys = np.fromiter(hist.keys(), dtype=np.int64, count=len(hist))
    raw_counts = np.fromiter(hist.values(), dtype=np.int64, count=len(hist))
    order = np.argsort(raw_keys, kind="stable")
    keys, counts = raw_keys[order], np.maximum(raw_counts[order], 0)
    cum = np.cumsum(counts)
    n_done = int(cum[-1]) if cum.size else 0
    n = n_done + max(int(n_censored), 0)
    if n == 0:
        return QuantileBand(p, math.nan, 0.0, math.inf, 0, 0, False)
    m = math.sqrt(p * (1.0 - p)) * cs_multiplier(n, alpha, n_opt)
    r_lo = math.floor(n * (p - m))
    r_hi = math.ceil(n * (p + m))
    r_est = max(1, math.ceil(n * p))

    def value_at(rank: int, edge: str) -> float:
        if rank > n_done:  # among the timeouts: only "≥ deadline" is known
            return deadline if edge == "lower" else math.inf
        k = _rank_value(keys, cum, rank)
        if edge == "lower":
            return float(GAMMA ** (k - 1))
        if edge == "upper":
            return float(GAMMA**k)
        return ddsketch_value(k)

    lower = 0.0 if r_lo < 1 else value_at(r_lo, "lower")
    upper = math.inf if r_hi > n else value_at(r_hi, "upper")
    estimate = math.inf if r_est > n_done else value_at(r_est, "value")
    identifiable = n_censored / n < 1.0 - p
    return QuantileBand(p, estimate, lower, upper, n, int(n_censored), identifiable)


def quantile_ratio_cs(cand: QuantileBand, prod: QuantileBand) -> CS:
    """Ratio of quantiles cand/prod ∈ [L_c/U_p, U_c/L_p] (each band built with α/2)."""
    est = _div(cand.estimate, prod.estimate)
    lower = _div(cand.lower, prod.upper)
    upper = _div(cand.upper, prod.lower)
    return CS(est, lower, upper, min(cand.n, prod.n))


def _div(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if b == 0.0:
        return math.inf if a > 0 else math.nan
    if math.isinf(b):
        return 0.0 if math.isfinite(a) else math.nan
    return a / b


# -- distances between distributions -------------------------------------------------------------
def _proportions(counts: Sequence[float] | FloatArray) -> FloatArray:
    arr = np.asarray(counts, dtype=np.float64)
    total = arr.sum()
    if total <= 0:
        raise ValueError("counts must have a positive total")
    return np.asarray(arr / total, dtype=np.float64)


def psi(
    prod: Sequence[float] | FloatArray, cand: Sequence[float] | FloatArray, eps: float = 1e-4
) -> float:
    """Population stability index Σ(q−p)·ln(q/p); empty bins get ``eps`` so the log stays finite."""
    p = np.maximum(_proportions(prod), eps)
    q = np.maximum(_proportions(cand), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def jensen_shannon(p: Sequence[float] | FloatArray, q: Sequence[float] | FloatArray) -> float:
    """Jensen–Shannon distance, base 2 (in [0, 1])."""
    return float(jensenshannon(_proportions(p), _proportions(q), base=2))


def kl_divergence(p: Sequence[float] | FloatArray, q: Sequence[float] | FloatArray) -> float:
    """KL(p‖q) in nats (``scipy.stats.entropy``)."""
    return float(sps.entropy(_proportions(p), _proportions(q)))


# -- trend ---------------------------------------------------------------------------------------
def theil_sen(
    y: Sequence[float] | FloatArray, t: Sequence[float] | FloatArray, confidence: float = 0.95
) -> TheilSen:
    """Theil–Sen slope of y over t with its confidence interval (robust to a few spikes)."""
    res = sps.theilslopes(
        np.asarray(y, dtype=np.float64), np.asarray(t, dtype=np.float64), alpha=confidence
    )
    return TheilSen(
        float(res.slope), float(res.intercept), float(res.low_slope), float(res.high_slope)
    )


# -- multiple testing ----------------------------------------------------------------------------
def bonferroni(alpha: float, k: int) -> float:
    """Per-check α when ``k`` checks share the family-wise α."""
    return alpha / max(k, 1)


def benjamini_hochberg(pvalues: Sequence[float] | FloatArray) -> FloatArray:
    """BH-adjusted p-values (step-up, monotone, capped at 1), in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m, dtype=np.float64)
    out[order] = np.minimum(adjusted, 1.0)
    return out
