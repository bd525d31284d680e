"""The report's charts as inline SVG strings, drawn with matplotlib's Agg-free object API.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot, no global figure state) and
saved as SVG under fixed settings so the same data gives the same bytes on every run and machine:

* ``svg.hashsalt`` is fixed per chart, so clip-path ids are stable and unique within one page;
* the ``Date`` metadata is dropped;
* text is drawn as paths from the DejaVu Sans font bundled with matplotlib, so the page looks the same
  whether or not the viewer has that font.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import matplotlib

matplotlib.use("Agg")  # never pick an interactive backend on a server

from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from comparator.measure.aggregates import keys
from reports.data import ReportData
from reports.facts import SIDES, cdf_points

__all__ = ["COLORS", "LABELS", "PLOTS", "render_plots"]

COLORS = {"prod": "#3b6ea8", "cand": "#d9822b"}
LABELS = {"prod": "production", "cand": "candidate"}
_STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "svg.fonttype": "path",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "legend.frameon": False,
    "path.simplify": True,
}
_MIB = 1024.0 * 1024.0
# Log axes labelled 2, 5, 10, 20 ms rather than 2×10⁰.
_PLAIN = FuncFormatter(lambda v, _pos: f"{v:g}")
_PLAIN_MINOR = FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:g}"[0] in "25" else "")


@contextmanager
def _style(name: str) -> Iterator[None]:
    params: Any = {**_STYLE, "svg.hashsalt": f"shadowtee-{name}"}
    with matplotlib.rc_context(params):
        yield


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buf.getvalue()
    # Inline SVG needs neither the XML declaration nor the DOCTYPE.
    return text[text.index("<svg") :]


def _draw(name: str, size: tuple[float, float], paint: Callable[[Figure], None]) -> str:
    with _style(name):
        fig = Figure(figsize=size, layout="constrained")
        paint(fig)
        return _svg(fig)


def _hour_axis(ax: Axes, data: ReportData) -> None:
    zone = ZoneInfo(data.tz)
    hours = max(1, round((data.end - data.start).total_seconds() / 3600))
    ticks = list(range(0, hours + 1, 3))
    ax.set_xticks(ticks)
    ax.set_xticklabels(
        [
            datetime.fromtimestamp(data.start.timestamp() + 3600 * t, zone).strftime("%H:%M")
            for t in ticks
        ]
    )
    ax.set_xlim(0, hours)


def _hour_x(data: ReportData, hour: datetime) -> float:
    return (hour - data.start).total_seconds() / 3600 + 0.5


def _latency_cdf(data: ReportData) -> Callable[[Figure], None]:
    def paint(fig: Figure) -> None:
        ax = fig.subplots()
        for side in SIDES:
            hist = data.total.hist(keys.latency(side))
            censored = data.total.count(keys.censored(side))
            xs, ys = cdf_points(hist, censored)
            if xs:
                label = f"{LABELS[side]} ({sum(hist.values()):,} calls, {censored:,} timeouts)"
                ax.step(xs, ys, where="post", color=COLORS[side], label=label, linewidth=1.6)
        for q in (0.5, 0.95, 0.99):
            ax.axhline(q, color="#999999", linewidth=0.6, linestyle=":")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_PLAIN)
        ax.xaxis.set_minor_formatter(_PLAIN_MINOR)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("share of calls ≤ x")
        ax.set_title("Latency CDF (completed calls after warm-up)")
        ax.legend(loc="lower right")

    return paint


def _hourly(data: ReportData, hourly: list[dict[str, Any]]) -> Callable[[Figure], None]:
    def paint(fig: Figure) -> None:
        ax_lat, ax_dis, ax_n = fig.subplots(3, 1, sharex=True, height_ratios=[3, 2, 2])
        xs = [_hour_x(data, datetime.fromisoformat(h["hour"])) for h in hourly]
        for side in SIDES:
            for q, style in (("p50", "-"), ("p99", "--")):
                ys = [h[f"{side}_{q}_ms"] for h in hourly]
                ax_lat.plot(
                    xs,
                    [math.nan if y is None else y for y in ys],
                    style,
                    marker=".",
                    color=COLORS[side],
                    label=f"{LABELS[side]} {q}",
                )
        hidden = [
            f"{LABELS[side]} {q} ≥ deadline in {n} h"
            for side in SIDES
            for q in ("p50", "p99")
            if (n := sum(h[f"{side}_{q}_ms"] is None and h[f"{side}_censored"] > 0 for h in hourly))
        ]
        if hidden:  # a quantile among the timeouts has no value to draw; say so on the chart
            ax_lat.text(
                0.99,
                0.04,
                "; ".join(hidden),
                transform=ax_lat.transAxes,
                ha="right",
                va="bottom",
                fontsize=8,
                color="#b23b00",
            )
        ax_lat.set_ylabel("latency (ms)")
        ax_lat.set_ylim(bottom=0)
        ax_lat.legend(ncols=4, loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=8)
        fig.suptitle("Hour by hour", fontweight="bold", fontsize=10)
        dis = [h["top1_disagreement"] for h in hourly]
        ax_dis.plot(
            xs, [math.nan if d is None else 100 * d for d in dis], marker=".", color="#7a4fa3"
        )
        ax_dis.set_ylabel("top-1\ndisagreement (%)")
        ax_dis.set_ylim(bottom=0)
        ax_n.bar(xs, [h["pairs"] for h in hourly], width=0.8, color="#9aaabb", label="pairs")
        bad = [h["cand_errors"] + h["cand_timeouts"] for h in hourly]
        ax_n.bar(xs, bad, width=0.8, color="#c0392b", label="candidate errors + timeouts")
        ax_n.set_ylabel("pairs per hour")
        ax_n.legend(ncols=2, loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=8)
        _hour_axis(ax_n, data)
        ax_n.set_xlabel(f"hour of {data.day.isoformat()} ({data.tz})")

    return paint


def _confusion(cls: dict[str, Any]) -> Callable[[Figure], None]:
    cells = {tuple(int(x) for x in k.split(",")): v for k, v in cls["confusion"].items()}
    labels = sorted({p for p, _ in cells} | {c for _, c in cells})
    index = {lab: i for i, lab in enumerate(labels)}

    def paint(fig: Figure) -> None:
        ax = fig.subplots()
        grid = [[0.0] * len(labels) for _ in labels]
        for (p, c), v in cells.items():
            grid[index[p]][index[c]] = float(v)
        masked = [[v if v > 0 else math.nan for v in row] for row in grid]
        vmax = max(max(row) for row in grid)
        image = ax.imshow(masked, cmap="Blues", norm=LogNorm(vmin=1, vmax=max(vmax, 2)))
        ax.grid(False)
        ax.set_xticks(range(len(labels)), [str(x) for x in labels])
        ax.set_yticks(range(len(labels)), [str(x) for x in labels])
        ax.set_xlabel("candidate class")
        ax.set_ylabel("production class")
        ax.set_title("Confusion: production × candidate")
        if len(labels) <= 12:
            for (p, c), v in sorted(cells.items()):
                dark = v > math.sqrt(vmax)
                ax.text(
                    index[c],
                    index[p],
                    f"{v:,}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "#222222",
                )
        fig.colorbar(image, ax=ax, shrink=0.8, label="pairs (log scale)")

    return paint


def _class_hist(cls: dict[str, Any]) -> Callable[[Figure], None]:
    hists = cls["class_hist"]
    labels = sorted({int(k) for side in SIDES for k in hists[side]})

    def paint(fig: Figure) -> None:
        ax = fig.subplots()
        width = 0.4
        for i, side in enumerate(SIDES):
            total = sum(hists[side].values()) or 1
            shares = [100 * hists[side].get(str(lab), 0) / total for lab in labels]
            ax.bar(
                [j + (i - 0.5) * width for j in range(len(labels))],
                shares,
                width=width,
                color=COLORS[side],
                label=LABELS[side],
            )
        ax.set_xticks(range(len(labels)), [str(x) for x in labels])
        ax.set_xlabel("predicted class")
        ax.set_ylabel("share of predictions (%)")
        ax.set_title("Predicted classes, side by side")
        ax.set_ylim(top=ax.get_ylim()[1] * 1.25)  # room for the legend above the bars
        ax.legend(ncols=2, loc="upper right")

    return paint


def _divergence(sample: dict[str, Any]) -> Callable[[Figure], None]:
    def paint(fig: Figure) -> None:
        ax = fig.subplots()
        edges = sample["edges"]
        ax.bar(
            edges[:-1],
            sample["counts"],
            width=[b - a for a, b in itertools.pairwise(edges)],
            align="edge",
            color="#7a4fa3",
            edgecolor="white",
        )
        if max(sample["counts"]) > 0:
            ax.set_yscale("symlog", linthresh=1)
        ax.set_xlabel("per-pair divergence (Jensen–Shannon distance for classifiers)")
        ax.set_ylabel("pairs (log scale)")
        ax.set_title(f"Per-pair divergence (sample of {sample['n']:,} pairs)")

    return paint


def _memory(data: ReportData) -> Callable[[Figure], None]:
    def paint(fig: Figure) -> None:
        ax = fig.subplots()
        for side, kind in sorted({(m.side, m.kind) for m in data.memory}):
            rows = [m for m in data.memory if m.side == side and m.kind == kind]
            xs = [(m.ts - data.start).total_seconds() / 3600 for m in rows]
            style = "-" if kind == "rss" else "-."
            color = COLORS.get(side, "#555555")
            ax.plot(
                xs,
                [m.value_bytes / _MIB for m in rows],
                style,
                color=color,
                label=f"{LABELS.get(side, side)} {kind}",
            )
            limits = [m.limit_bytes for m in rows if m.limit_bytes]
            if limits:
                ax.axhline(max(limits) / _MIB, color=color, linestyle=":", linewidth=1)
        _hour_axis(ax, data)
        ax.set_ylabel("memory (MiB)")
        ax.set_xlabel(f"hour ({data.tz}); dotted lines: limits")
        ax.set_title("Memory over time")
        ax.set_ylim(bottom=0)
        ax.legend(ncols=4, loc="lower right", fontsize=8)

    return paint


#: Every chart :func:`render_plots` can draw, in page order; each is also written as ``NAME.svg``.
PLOTS = ("latency_cdf", "hourly", "confusion", "class_hist", "divergence", "memory")


def render_plots(data: ReportData, facts: dict[str, Any]) -> dict[str, str]:
    """Every chart that has data, as ``{name: inline SVG}`` in page order."""
    if data.empty:
        return {}
    out: dict[str, str] = {}
    if any(data.total.hist(keys.latency(s)) for s in SIDES):
        out["latency_cdf"] = _draw("latency_cdf", (7.5, 3.6), _latency_cdf(data))
    if facts["hourly"]:
        out["hourly"] = _draw("hourly", (9.5, 6.4), _hourly(data, facts["hourly"]))
    cls = facts["divergence"]["classification"]
    if cls and cls["confusion"]:
        side = 4.2 + 0.18 * len(cls["confusion"]) ** 0.5
        out["confusion"] = _draw("confusion", (side + 1.2, side), _confusion(cls))
    if cls and any(cls["class_hist"].values()):
        out["class_hist"] = _draw("class_hist", (7.5, 3.2), _class_hist(cls))
    if facts["divergence"]["sample"]["n"]:
        out["divergence"] = _draw(
            "divergence", (7.5, 3.2), _divergence(facts["divergence"]["sample"])
        )
    if data.memory:
        out["memory"] = _draw("memory", (9.5, 3.4), _memory(data))
    return out
