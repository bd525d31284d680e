"""Output health: running mean, standard deviation, NaN and Inf counts of returned values."""

from __future__ import annotations

import math

import numpy as np

from serving.metrics import OutputHealth


def test_clean_and_broken_outputs_are_summarised_per_output() -> None:
    health = OutputHealth()
    health.observe("p", np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    health.observe("p", np.array([np.nan, 5.0, np.inf, -np.inf], np.float32))
    health.observe("label", np.array([1, 2, 3], np.int64))  # not floating point: ignored
    snap = health.snapshot()
    assert set(snap) == {"p"}
    p = snap["p"]
    assert (p.count, p.nan, p.inf) == (5, 1, 2)
    assert math.isclose(p.total, 15.0) and math.isclose(p.squares, 55.0)
