"""The two-sample tests reported beside a verdict (after Benjamini–Hochberg adjustment,
:func:`comparator.judge.stats.benjamini_hochberg`), never used to gate it.

Pure functions of numbers or numpy arrays, each returning a frozen :class:`TestResult`, as in
:mod:`comparator.judge.stats`. Timeouts enter :func:`logrank_test` as latencies right-censored at
their deadline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy import stats as sps

from comparator.judge.stats import FloatArray

__all__ = [
    "TestResult",
    "ks_test",
    "logrank_test",
    "mann_whitney",
    "mcnemar_exact",
    "wilcoxon_test",
]


@dataclass(frozen=True, slots=True)
class TestResult:
    """A diagnostic test: reported (after BH adjustment), never used to gate."""

    statistic: float
    pvalue: float


def wilcoxon_test(d: Sequence[float] | FloatArray) -> TestResult:
    r = sps.wilcoxon(np.asarray(d, dtype=np.float64))
    return TestResult(float(r.statistic), float(r.pvalue))


def mcnemar_exact(b: int, c: int) -> TestResult:
    """Exact McNemar test on discordant counts: binomtest(min(b, c), b + c, 0.5); statistic = c."""
    if b + c == 0:
        return TestResult(float(c), 1.0)
    # With p = 0.5 the binomial is symmetric, so binomtest's two-sided p-value is exactly twice the
    # smaller tail; the closed form avoids binomtest's search, which is slow at large b + c.
    pvalue = min(1.0, 2.0 * float(special.bdtr(min(b, c), b + c, 0.5)))
    return TestResult(float(c), pvalue)


def ks_test(x: Sequence[float] | FloatArray, y: Sequence[float] | FloatArray) -> TestResult:
    r = sps.ks_2samp(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return TestResult(float(r.statistic), float(r.pvalue))


def mann_whitney(
    x: Sequence[float] | FloatArray, y: Sequence[float] | FloatArray, method: str = "auto"
) -> TestResult:
    r = sps.mannwhitneyu(
        np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), method=method
    )
    return TestResult(float(r.statistic), float(r.pvalue))


def logrank_test(
    x_done: Sequence[float] | FloatArray,
    x_censored: Sequence[float] | FloatArray,
    y_done: Sequence[float] | FloatArray,
    y_censored: Sequence[float] | FloatArray,
) -> TestResult:
    """Log-rank test of two latency samples where timeouts are right-censored at their deadline."""
    x = sps.CensoredData(
        uncensored=np.asarray(x_done, dtype=np.float64),
        right=np.asarray(x_censored, dtype=np.float64),
    )
    y = sps.CensoredData(
        uncensored=np.asarray(y_done, dtype=np.float64),
        right=np.asarray(y_censored, dtype=np.float64),
    )
    r = sps.logrank(x, y)
    return TestResult(float(r.statistic), float(r.pvalue))
