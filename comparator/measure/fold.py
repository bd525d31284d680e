"""A measured batch folded into one :class:`~comparator.measure.aggregates.Aggregate` per UTC
hour (:func:`fold`), ready to merge into the stored rows; pure: no I/O, no event loop, no clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

from comparator.measure.aggregates import (
    MIN_KEY,
    MIN_VALUE_MS,
    OTHER,
    SEGMENT_CAP,
    Aggregate,
    Moments,
    keys,
)
from comparator.measure.normalize import (
    COS_TAIL_AT,
    F64,
    JS_TAIL_AT,
    LOG_GAMMA,
    BatchMetrics,
    NormalizeConfig,
)
from comparator.wire import Pair, SideResult

__all__ = ["ddsketch_keys", "fold", "signed_keys"]


def ddsketch_keys(values: F64) -> NDArray[np.int64]:
    """Vectorised :func:`comparator.measure.aggregates.ddsketch_key`: ceil(log_γ x), MIN_KEY at or below 1 µs."""
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.ceil(np.log(values) / LOG_GAMMA)
    return np.where(values <= MIN_VALUE_MS, MIN_KEY, k).astype(np.int64)


def _moments(values: F64) -> Moments:
    if values.size == 0:
        return Moments()
    mean = float(values.mean())
    return Moments(int(values.size), mean, float(((values - mean) ** 2).sum()))


def _counts(values: NDArray[Any]) -> dict[str, int]:
    u, c = np.unique(values, return_counts=True)
    return {str(k): int(v) for k, v in zip(u.tolist(), c.tolist(), strict=True)}


def fold(
    pairs: Sequence[Pair],
    metrics: BatchMetrics,
    *,
    experiment_start: datetime,
    config: NormalizeConfig,
    stamps: F64 | None = None,
) -> dict[datetime, Aggregate]:
    """One aggregate per UTC hour of ``pair.ts`` touched by the batch (names from ``keys``).

    Per hour: ``pairs``; each side's outcomes (``prod``/``cand``/``twin``); the paired 2×2 cells of
    ``error`` (outcome error or status ≥ 500) and ``timeout`` over pairs where both sides were sent
    (neither shed nor skipped), and of ``invalid`` over pairs where both sides answered (ok, status
    < 500). Divergence statistics of the batch's task cover pairs where both outputs are valid; the
    twin's classification counters compare production with its twin. Latency, only from
    ``experiment_start + warmup_minutes`` on: completed calls (ok, or error with a status) go to
    the log-bucket histogram; timeouts are counted as censored, their deadlines kept as moments.
    Counts never skip the warm-up. ``stamps`` are the pairs' ``ts`` as POSIX seconds, when the
    caller has them already. Each dimension of the pairs' ``segments`` gets the same counters,
    moments and (not latency) histograms per value (``Aggregate.segments``), bounded by
    ``SEGMENT_CAP`` values a row.
    """
    if len(pairs) != len(metrics):
        raise ValueError(f"metrics: {len(metrics)} rows for {len(pairs)} pairs")
    # POSIX seconds, distinct and ordered for distinct microseconds: hours and the warm-up test.
    if stamps is None:
        stamps = np.array([p.ts.timestamp() for p in pairs], dtype=np.float64)
    hours = stamps // 3600  # UTC hour numbers since 1970
    warm_from = experiment_start + timedelta(minutes=config.warmup_minutes)
    warm = stamps >= warm_from.timestamp()
    sides: dict[str, list[SideResult | None]] = {
        "prod": [p.prod for p in pairs],
        "cand": [p.candidate for p in pairs],
    }
    if any(p.twin is not None for p in pairs):
        sides["twin"] = [p.twin for p in pairs]
    cols = {name: _side_columns(results) for name, results in sides.items()}
    dims = sorted({d for p in pairs if p.segments for d in p.segments})
    values = {
        d: np.array([(p.segments or {}).get(d, "") for p in pairs], dtype=object) for d in dims
    }
    out: dict[datetime, Aggregate] = {}
    for h in np.unique(hours).tolist():
        hour = datetime.fromtimestamp(h * 3600, UTC)
        in_hour = hours == h
        agg = out[hour] = _fold_hour(np.flatnonzero(in_hour), metrics, cols, warm)
        for d in dims:
            # A pair without a value for the dimension (an older pair, a header not sent) is in
            # no segment of it.
            # Beyond SEGMENT_CAP values in one hour of a batch, the rarest fold as OTHER at once,
            # so a batch of distinct values costs one fold, not one per value.
            counted = Counter(values[d][in_hour].tolist())
            counted.pop("", None)
            kept = [v for v, _ in counted.most_common(SEGMENT_CAP - 1)]
            masks = {str(v): in_hour & (values[d] == v) for v in kept}
            if len(counted) > len(kept):
                masks[OTHER] = in_hour & (values[d] != "") & ~np.isin(values[d], kept)
            segs = {}
            for v, mask in masks.items():
                part = _fold_hour(np.flatnonzero(mask), metrics, cols, warm)
                hists = {
                    k: h
                    for k, h in part.hists.items()
                    if not k.startswith("lat.") and k != keys.REG_PROD_HIST
                }
                segs[v] = Aggregate(counters=part.counters, moments=part.moments, hists=hists)
            agg.add_segments(d, segs)
    return out


def _side_columns(results: list[SideResult | None]) -> dict[str, NDArray[Any]]:
    present = np.array([r is not None for r in results])
    # Outcome is a StrEnum: numpy reads each member as its value.
    outcome = np.array([r.outcome if r is not None else "" for r in results], dtype="U8")
    status = np.array([r.status if r is not None and r.status is not None else 0 for r in results])
    latency = np.array(
        [r.latency_ms if r is not None and r.latency_ms is not None else np.nan for r in results]
    )
    return {"present": present, "outcome": outcome, "status": status, "latency": latency}


def _fold_hour(
    idx: NDArray[np.int64],
    m: BatchMetrics,
    cols: dict[str, dict[str, NDArray[Any]]],
    warm: NDArray[np.bool_],
) -> Aggregate:
    agg = Aggregate()
    agg.add(keys.PAIRS, len(idx))
    for side, c in cols.items():
        present = c["present"][idx]
        for outcome, count in _counts(c["outcome"][idx][present]).items():
            agg.add(keys.outcome(side, outcome), count)
        # Latency of completed calls; timeouts, on either side, as censored counts at their
        # deadline. A timeout without its deadline (the proxy records one on both sides) cannot be
        # placed: the quantile bands read the censored values as the deadlines' mean.
        oc, status, lat = c["outcome"][idx], c["status"][idx], c["latency"][idx]
        w = warm[idx] & present & ~np.isnan(lat)
        done = w & ((oc == "ok") | ((oc == "error") & (status > 0)))
        if done.any():
            u, cnt = np.unique(ddsketch_keys(lat[done]), return_counts=True)
            agg.add_hist(keys.latency(side), dict(zip(u.tolist(), cnt.tolist(), strict=True)))
        late = w & (oc == "timeout")
        agg.add(keys.censored(side), int(late.sum()))
        agg.add_moments(f"lat.{side}.deadline", _moments(lat[late]))

    p, c = cols["prod"], cols["cand"]
    po, co = p["outcome"][idx], c["outcome"][idx]
    sent = ~np.isin(po, ("shed", "skipped")) & ~np.isin(co, ("shed", "skipped"))
    p_err = (po == "error") | (p["status"][idx] >= 500)
    c_err = (co == "error") | (c["status"][idx] >= 500)
    _paired(agg, keys.ERROR, p_err[sent], c_err[sent])
    _paired(agg, keys.TIMEOUT, (po == "timeout")[sent], (co == "timeout")[sent])
    p_ok = (po == "ok") & ~p_err
    c_ok = (co == "ok") & ~c_err
    both = sent & p_ok & c_ok
    _paired(agg, keys.INVALID, m.prod_invalid[idx][both], m.cand_invalid[idx][both])

    # A non-finite divergence only comes from outputs so large that the arithmetic overflowed:
    # such pairs stay out of the divergence statistics rather than poison every later merge.
    valid = both & ~m.prod_invalid[idx] & ~m.cand_invalid[idx] & np.isfinite(m.divergence[idx])
    sel = idx[valid]
    if m.task == "classification":
        agree = m.top1_agree[sel]
        agg.add(keys.CLS_N, int(sel.size))
        agg.add(keys.CLS_AGREE, int(np.nansum(agree)))
        js = m.js[sel][~np.isnan(m.js[sel])]
        agg.add(keys.JS_TAIL, int((js > JS_TAIL_AT).sum()))
        agg.add_moments(keys.JS, _moments(js))
        pc, cc = m.prod_class[sel], m.cand_class[sel]
        agg.add_cats(keys.CLASS_PROD, _counts(pc))
        agg.add_cats(keys.CLASS_CAND, _counts(cc))
        agg.add_cats(
            keys.CONFUSION, _counts(np.char.add(np.char.add(pc.astype(str), ","), cc.astype(str)))
        )
        if "twin" in cols:
            t = cols["twin"]
            t_ok = (t["outcome"][idx] == "ok") & (t["status"][idx] < 500)
            t_valid = (
                ~m.prod_invalid[idx] & ~m.twin_invalid[idx] & ~np.isnan(m.twin_top1_agree[idx])
            )
            tsel = idx[p_ok & t_ok & t_valid]
            tjs = m.twin_js[tsel][~np.isnan(m.twin_js[tsel])]
            agg.add(keys.TWIN_CLS_N, int(tsel.size))
            agg.add(keys.TWIN_CLS_AGREE, int(np.nansum(m.twin_top1_agree[tsel])))
            agg.add(keys.TWIN_JS_TAIL, int((tjs > JS_TAIL_AT).sum()))
            agg.add_moments(keys.TWIN_JS, _moments(tjs))
    elif m.task == "regression":
        agg.add(keys.REG_N, int(sel.size))
        agg.add(keys.REG_TOL_EXCEED, int(np.nansum(m.tol_exceed[sel])))
        over = m.tol_over[sel]
        over = over[over > 0]  # pairs at or below 0 stay within tolerance for any atol ≥ 0
        if over.size:  # keys ceil(log_γ x) with no floor: regression values may be tiny
            u, cnt = np.unique(
                np.ceil(np.log(over) / LOG_GAMMA).astype(np.int64), return_counts=True
            )
            agg.add_hist("reg.tol_over", dict(zip(u.tolist(), cnt.tolist(), strict=True)))
        agg.add_moments(keys.REG_DIFF, _moments(m.diff[sel]))
        agg.add_moments(keys.REG_PROD, _moments(m.prod_value[sel]))
        yp = m.prod_value[sel]
        yp = yp[np.isfinite(yp)]
        if yp.size:  # production's outputs, binned: the drift of its prediction mix (reports)
            u, cnt = np.unique(signed_keys(yp), return_counts=True)
            agg.add_hist(keys.REG_PROD_HIST, dict(zip(u.tolist(), cnt.tolist(), strict=True)))
    elif m.task == "embedding":
        cos = m.cosine[sel]
        agg.add(keys.EMB_N, int(sel.size))
        agg.add(keys.EMB_COS_TAIL, int((cos < COS_TAIL_AT).sum()))
        agg.add_moments(keys.EMB_COS, _moments(cos))
    elif m.task == "ranking":
        agg.add_moments(keys.RANK_RBO_LOSS, _moments(m.rbo_loss[sel]))
    if "twin" in cols:
        _fold_twin(agg, m, sel, cols["twin"], idx)
    return agg


def _fold_twin(
    agg: Aggregate,
    m: BatchMetrics,
    sel: NDArray[np.int64],
    t: dict[str, NDArray[Any]],
    idx: NDArray[np.int64],
) -> None:
    """The paired noise floor on the twin slice: per request, f(prod, cand) against f(prod, twin).

    Over pairs compared (``sel``) whose twin answered validly too: discordant cells
    ``twin.{check}.n{twin_bad}{cand_bad}`` of each share check (read by comparator.judge.checks), and
    for ranking the moments of the per-request excess loss, ``twin.rank_rbo.excess``.
    """
    pos = np.searchsorted(idx, sel)
    t_ok = (t["outcome"][idx] == "ok") & (t["status"][idx] < 500)
    s3 = sel[t_ok[pos] & ~m.twin_invalid[sel]]
    if m.task == "classification":
        s3 = s3[~np.isnan(m.twin_top1_agree[s3])]
        _paired(agg, "twin.top1_disagreement", m.twin_top1_agree[s3] == 0, m.top1_agree[s3] == 0)
        both = s3[~np.isnan(m.js[s3]) & ~np.isnan(m.twin_js[s3])]
        _paired(agg, "twin.js_tail", m.twin_js[both] > JS_TAIL_AT, m.js[both] > JS_TAIL_AT)
    elif m.task == "regression":
        s3 = s3[~np.isnan(m.twin_tol[s3])]
        _paired(agg, "twin.reg_tolerance", m.twin_tol[s3] == 1, m.tol_exceed[s3] == 1)
    elif m.task == "embedding":
        s3 = s3[np.isfinite(m.twin_cos[s3])]
        _paired(
            agg, "twin.emb_cosine_tail", m.twin_cos[s3] < COS_TAIL_AT, m.cosine[s3] < COS_TAIL_AT
        )
    elif m.task == "ranking":
        s3 = s3[np.isfinite(m.twin_rbo_loss[s3])]
        agg.add_moments("twin.rank_rbo.excess", _moments(m.rbo_loss[s3] - m.twin_rbo_loss[s3]))


def signed_keys(values: F64) -> NDArray[np.int64]:
    """Log buckets (1%) of values of any sign: ``2·ceil(log_γ max(|y|, 1e-12)) + (y < 0)``;
    :func:`comparator.measure.aggregates.signed_value` reads one back."""
    mag = np.maximum(np.abs(values), 1e-12)
    return (2 * np.ceil(np.log(mag) / LOG_GAMMA).astype(np.int64) + (values < 0)).astype(np.int64)


def _paired(
    agg: Aggregate, check: str, prod_bad: NDArray[np.bool_], cand_bad: NDArray[np.bool_]
) -> None:
    codes = prod_bad.astype(np.int64) * 2 + cand_bad.astype(np.int64)
    u, cnt = np.unique(codes, return_counts=True)
    for code, count in zip(u.tolist(), cnt.tolist(), strict=True):
        agg.add(keys.paired(check, bool(code >> 1), bool(code & 1)), count)
