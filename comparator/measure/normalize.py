"""Normalise model outputs and measure each pair, vectorised over an ingest batch.

``measure(pairs, config)`` reads one output per answered side, decides the batch's task and returns
:class:`BatchMetrics`, numpy arrays aligned with ``pairs``; :func:`comparator.measure.fold.fold`
turns a measured batch into hourly aggregates. Both are pure: no I/O, no event loop, no clock.

Outputs are read by :func:`comparator.measure.outputs.read_output` (JSON pointer, OIP v2 ``outputs[]`` or
v1 ``predictions``) and laid out as ``rows × width`` (see :mod:`comparator.measure.outputs`); one row is the
common case. A multi-row response is compared row by row and still counts as **one unit**:
continuous metrics (JS, |Δ|, cosine, RBO) are the mean over rows; top-1 agreement and the tolerance
flag are 1 only when every row agrees / one row exceeds (the conservative reading); the predicted
class is the first row's.

The task is ``NormalizeConfig.task``, or inferred from production's outputs when ``"auto"``
(:func:`comparator.measure.outputs.infer_task`).

A body that came as OIP binary tensors (the side's ``binary``) is decoded first
(:func:`comparator.measure.binary.decode_binary`).

A side that answered (outcome ok, status < 500) has an **invalid** output when its body is null (not
JSON, nor a binary tensor body that decodes), the output is missing or not numeric, holds NaN/Inf, its layout differs from production's, or
— for classification — a row is not on the probability simplex (logits are soft-maxed first, and
flagged). A ranking with repeated ids is invalid too. A side that did not answer is not invalid: it
has no output to judge, and the error/timeout checks count it instead.
"""

from __future__ import annotations

import base64
import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from comparator.measure.aggregates import (
    GAMMA,
)
from comparator.measure.binary import decode_binary
from comparator.measure.divergence import cosine, js_distance, on_simplex, rbo_ext, softmax
from comparator.measure.outputs import (
    TASKS,
    Layout,
    Output,
    infer_task,
    is_label,
    is_logits,
    layout,
    read_outputs,
)
from comparator.wire import Pair, SideResult
from contract.outcomes import Outcome

__all__ = ["BatchMetrics", "NormalizeConfig", "measure"]

JS_TAIL_AT = 0.1
COS_TAIL_AT = 0.95
RBO_P = 0.9
LOG_GAMMA = math.log(GAMMA)

F64 = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class NormalizeConfig:
    """How outputs are read and compared; one per experiment.

    ``rtol``/``atol`` are the regression tolerance ``|Δ| > atol + rtol·|y_p|``; ``simplex_tol`` how far
    a probability row may sum from 1; ``warmup_minutes`` the start-up window kept out of latency.
    """

    task: str = "auto"
    output_pointer: str | None = None
    rtol: float = 0.05
    atol: float = 0.0
    simplex_tol: float = 1e-3
    warmup_minutes: float = 30

    def __post_init__(self) -> None:
        if self.task != "auto" and self.task not in TASKS:
            raise ValueError(f"task: expected auto or one of {', '.join(TASKS)}, got {self.task!r}")
        if self.output_pointer is not None and self.output_pointer[:1] not in ("", "/"):
            raise ValueError(
                f"output_pointer: a JSON pointer starts with '/', got {self.output_pointer!r}"
            )
        for name in ("rtol", "atol", "simplex_tol", "warmup_minutes"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite number ≥ 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class BatchMetrics:
    """Per-pair values, each array aligned with the batch; NaN (floats) or −1 (classes) where a
    value does not apply. ``task`` is the batch's task, or ``"unknown"`` when no output was readable.

    ``divergence`` is one "how different" number per pair for drill-down ordering: the JS distance
    (classification), |Δ| / (atol + rtol·|y_p|) (regression: > 1 is outside tolerance), 1 − cosine
    (embedding) or 1 − RBO (ranking). ``diff``/``prod_value`` (regression) and the ``twin_*`` arrays
    (production versus its twin, the noise floor) feed :func:`fold`.
    """

    task: str
    prod_class: NDArray[np.int64]
    cand_class: NDArray[np.int64]
    top1_agree: F64
    js: F64
    abs_diff: F64
    cosine: F64
    rbo_loss: F64
    prod_invalid: NDArray[np.bool_]
    cand_invalid: NDArray[np.bool_]
    divergence: F64
    diff: F64
    prod_value: F64
    tol_exceed: F64
    # regression: max over rows of |Δ| − rtol·|y_p|, the atol a pair would need to stay within
    # tolerance; folded as a log histogram so a look applies atol = 0.01·sd(y_p) (VERDICT.md)
    tol_over: F64
    logits: NDArray[np.bool_]
    twin_invalid: NDArray[np.bool_]
    twin_top1_agree: F64
    twin_js: F64
    # production versus its twin, for the paired noise floor of every task (fold)
    twin_tol: F64
    twin_cos: F64
    twin_rbo_loss: F64

    def __len__(self) -> int:
        return len(self.prod_invalid)


# -- measuring a batch --------------------------------------------------------------------------------


def _answered(side: SideResult | None) -> bool:
    return (
        side is not None
        and side.outcome is Outcome.OK
        and (side.status is None or side.status < 500)
    )


def _answered_all(sides: list[SideResult]) -> list[bool]:
    """:func:`_answered` of sides that are all present, without a call per side."""
    ok = Outcome.OK
    return [s.outcome is ok and (s.status is None or s.status < 500) for s in sides]


@dataclass(slots=True)
class _Side:
    """One side's valid outputs stacked by layout, with per-pair flags aligned with the batch.

    ``groups[layout]`` is (pair indices, array (len(indices), rows, width)); ``row[i]`` is pair
    ``i``'s row in its layout's array, −1 when the pair has no valid output on this side.
    """

    invalid: NDArray[np.bool_]
    layout: list[Layout | None]
    groups: dict[Layout, tuple[NDArray[np.int64], F64]]
    row: NDArray[np.int64]
    logits: NDArray[np.bool_]


def _stack(
    outs: list[Output | None], answered: list[bool], task: str, config: NormalizeConfig
) -> _Side:
    n = len(outs)
    side = _Side(np.zeros(n, bool), [None] * n, {}, np.full(n, -1, np.int64), np.zeros(n, bool))
    groups: dict[Layout, list[tuple[int, Output]]] = {}
    layouts: dict[tuple[int, ...], Layout] = {}  # shapes repeat across a batch
    for i, out in enumerate(outs):
        if not answered[i]:
            continue
        if out is None:
            side.invalid[i] = True
            continue
        lay = layouts.get(out.shape)
        if lay is None:
            lay = layouts[out.shape] = layout(out.shape, task)
        side.layout[i] = lay
        groups.setdefault(lay, []).append((i, out))
    for (rows, width), members in groups.items():
        idx = np.array([i for i, _ in members], dtype=np.int64)
        group = [o for _, o in members]
        try:
            arr = np.array([o.flat for o in group], dtype=np.float64)
        except (TypeError, ValueError, OverflowError):  # a string, null or 1e400: find it
            arr = np.full((len(idx), rows * width), np.nan)
            for r, o in enumerate(group):
                with contextlib.suppress(TypeError, ValueError, OverflowError):
                    arr[r] = np.asarray(o.flat, dtype=np.float64)
        arr = arr.reshape(len(idx), rows, width)
        ok = np.asarray(np.isfinite(arr).all(axis=(1, 2)), dtype=bool)
        if task == "classification":
            logit = _by_name(group, is_logits)
            label = _by_name(group, is_label)
            if logit.any():
                with np.errstate(all="ignore"):
                    arr = np.where(logit[:, None, None], softmax(arr), arr)
            ok &= label | np.all(on_simplex(arr, config.simplex_tol), axis=1)
            side.logits[idx] = logit
        elif task == "ranking":
            ok &= np.array([o.integer for o in group], dtype=bool)
            srt = np.sort(arr, axis=-1)
            ok &= ~(srt[..., 1:] == srt[..., :-1]).any(axis=(1, 2))
        side.invalid[idx[~ok]] = True
        kept = idx[ok]
        side.groups[(rows, width)] = (kept, arr[ok])
        side.row[kept] = np.arange(kept.size)
    return side


def _by_name(group: list[Output], flag: Callable[[Output], bool]) -> NDArray[np.bool_]:
    """``flag`` of each output, judged once per distinct (name, integer): the flags read only
    those and the group's shared layout, and a batch's outputs mostly share one name."""
    kinds = {(o.name, o.integer) for o in group}
    if len(kinds) == 1:  # the common case: one output name throughout
        return np.full(len(group), flag(group[0]), dtype=bool)
    seen: dict[tuple[str, bool], bool] = {}
    out = np.empty(len(group), dtype=bool)
    for r, o in enumerate(group):
        key = (o.name, o.integer)
        value = seen.get(key)
        if value is None:
            value = seen[key] = flag(o)
        out[r] = value
    return out


def _compare(
    task: str, a: _Side, b: _Side, config: NormalizeConfig, n: int
) -> dict[str, NDArray[Any]]:
    """Metrics of b against a (a: production) for pairs where both are valid, grouped by layout.

    A pair whose two valid outputs differ in layout marks b's output invalid.
    """
    out: dict[str, NDArray[Any]] = {
        name: np.full(n, np.nan)
        for name in (
            "agree",
            "js",
            "abs_diff",
            "cos",
            "rbo_loss",
            "div",
            "diff",
            "yp",
            "tol",
            "over",
        )
    }
    out["pc"] = np.full(n, -1, np.int64)
    out["cc"] = np.full(n, -1, np.int64)
    b_valid = b.row >= 0
    for lay, (idx_a, arr_a) in a.groups.items():
        both = b_valid[idx_a]
        b_idx, b_arr = b.groups.get(lay, (np.empty(0, np.int64), np.empty((0, *lay))))
        same = np.zeros(n, bool)
        same[b_idx] = True
        paired = both & same[idx_a]
        mismatch = idx_a[both & ~paired]
        b.invalid[mismatch] = True
        b.row[mismatch] = -1
        if not paired.any():
            continue
        idx = idx_a[paired]
        p = arr_a[paired]
        q = b_arr[b.row[idx]]
        # Outputs near 1e308 overflow products; their metrics come out inf/NaN and fold skips them.
        with np.errstate(all="ignore"):
            _compare_group(task, lay[1], idx, p, q, out, config)
    return out


def _compare_group(
    task: str,
    width: int,
    idx: NDArray[np.int64],
    p: F64,
    q: F64,
    out: dict[str, NDArray[Any]],
    config: NormalizeConfig,
) -> None:
    """The metrics of one layout group, written into ``out`` at the pairs' indices."""
    if task == "classification":
        if width == 1:  # labels: the value is the class
            pcls, ccls = p[..., 0].astype(np.int64), q[..., 0].astype(np.int64)
        else:
            pcls, ccls = p.argmax(axis=-1), q.argmax(axis=-1)
            out["js"][idx] = js_distance(p, q).mean(axis=1)
            out["div"][idx] = out["js"][idx]
        out["agree"][idx] = (pcls == ccls).all(axis=1)
        out["pc"][idx], out["cc"][idx] = pcls[:, 0], ccls[:, 0]
        if width == 1:
            out["div"][idx] = 1.0 - out["agree"][idx]
    elif task == "regression":
        d = q - p
        ad = np.abs(d)
        tol = config.atol + config.rtol * np.abs(p)
        out["diff"][idx] = d.mean(axis=(1, 2))
        out["yp"][idx] = p.mean(axis=(1, 2))
        out["abs_diff"][idx] = ad.mean(axis=(1, 2))
        out["tol"][idx] = (ad > tol).any(axis=(1, 2))
        out["over"][idx] = (ad - config.rtol * np.abs(p)).max(axis=(1, 2))
        # Floored so that y_p = 0 with atol = 0 still gives a finite (huge) divergence.
        out["div"][idx] = (ad / np.maximum(tol, 1e-12)).mean(axis=(1, 2))
    elif task == "embedding":
        out["cos"][idx] = cosine(p, q).mean(axis=1)
        out["div"][idx] = 1.0 - out["cos"][idx]
    elif task == "ranking":
        out["rbo_loss"][idx] = 1.0 - rbo_ext(p, q, RBO_P).mean(axis=1)
        out["div"][idx] = out["rbo_loss"][idx]


def _document(side: SideResult) -> Any:
    """The answer as JSON: the body, or else the binary tensor body it came as, decoded
    (:func:`comparator.measure.binary.decode_binary`); None when neither is readable."""
    if side.body is not None or side.binary is None:
        return side.body
    try:
        raw = base64.b64decode(side.binary.base64, validate=True)
    except ValueError:
        return None
    return decode_binary(raw, side.binary.header_length)


def measure(pairs: Sequence[Pair], config: NormalizeConfig) -> BatchMetrics:
    """Per-pair metrics of a batch (see the module docstring for how outputs are read)."""
    n = len(pairs)
    ptr = config.output_pointer
    prod_sides = [p.prod for p in pairs]
    cand_sides = [p.candidate for p in pairs]
    answered_p = _answered_all(prod_sides)
    answered_c = _answered_all(cand_sides)
    if any(p.twin is not None for p in pairs):
        twin_sides = [p.twin for p in pairs]
        answered_t = [_answered(t) for t in twin_sides]
        out_t = read_outputs(
            [
                _document(t) if a and t is not None else None
                for t, a in zip(twin_sides, answered_t, strict=True)
            ],
            ptr,
        )
    else:
        answered_t, out_t = [False] * n, [None] * n
    # A side that did not answer reads as None, like a body that is not JSON.
    out_p = read_outputs(
        [
            (s.body if s.binary is None else _document(s)) if a else None
            for s, a in zip(prod_sides, answered_p, strict=True)
        ],
        ptr,
    )
    out_c = read_outputs(
        [
            (s.body if s.binary is None else _document(s)) if a else None
            for s, a in zip(cand_sides, answered_c, strict=True)
        ],
        ptr,
    )
    task = infer_task(out_p, out_c, config.task, config.simplex_tol)
    prod = _stack(out_p, answered_p, task, config)
    cand = _stack(out_c, answered_c, task, config)
    twin = _stack(out_t, answered_t, task, config)
    m = _compare(task, prod, cand, config, n)
    t = _compare(task, prod, twin, config, n) if any(answered_t) else None
    nan = np.full(n, np.nan)
    return BatchMetrics(
        task=task,
        prod_class=m["pc"],
        cand_class=m["cc"],
        top1_agree=m["agree"],
        js=m["js"],
        abs_diff=m["abs_diff"],
        cosine=m["cos"],
        rbo_loss=m["rbo_loss"],
        prod_invalid=prod.invalid,
        cand_invalid=cand.invalid,
        divergence=m["div"],
        diff=m["diff"],
        prod_value=m["yp"],
        tol_exceed=m["tol"],
        tol_over=m["over"],
        logits=prod.logits | cand.logits,
        twin_invalid=twin.invalid,
        twin_top1_agree=t["agree"] if t else nan,
        twin_js=t["js"] if t else nan.copy(),
        twin_tol=t["tol"] if t else nan.copy(),
        twin_cos=t["cos"] if t else nan.copy(),
        twin_rbo_loss=t["rbo_loss"] if t else nan.copy(),
    )
