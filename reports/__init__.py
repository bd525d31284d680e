"""shadowtee reports: the daily divergence report of one experiment, as HTML, JSON and Markdown.

::

    paths = await write_report(store, "digits-v1-vs-v2", date(2026, 11, 22), Path("out"))
    # out/report.html  — self-contained page: verdict, scorecard, charts (inline SVG), no JavaScript
    # out/report.json  — the same facts, machine-readable ("schema": "shadowtee.report/1")
    # out/report.md    — a short summary for a pull-request comment
    # out/NAME.svg     — each chart on its own, the same SVG text as inlined in the page

How it fits together: :mod:`reports.data` gathers a :class:`ReportData` from the store (hourly
aggregates, memory samples, the verdict at the end of the day, a bounded sample of pairs);
:mod:`reports.facts` turns it into plain numbers; :mod:`reports.plots` draws the charts;
:mod:`reports.render` and :mod:`reports.markdown` render the three documents. Same database
and day → byte-identical files.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from reports.data import ReportData, ReportError, gather

if TYPE_CHECKING:
    from comparator.store.store import Store

__all__ = ["ReportData", "ReportError", "ReportPaths", "write_report"]


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_report` put the three documents and the chart images (page order)."""

    html: Path
    json: Path
    markdown: Path
    plots: tuple[Path, ...] = ()


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a report."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def write_report(
    store: Store,
    experiment: str,
    day: date,
    out_dir: Path,
    *,
    policy: Path | None = None,
    tz: str = "UTC",
) -> ReportPaths:
    """Gather, render and write the report of ``experiment`` for ``day``; returns the paths.

    Raises :class:`ReportError` (one printable line) for an unknown experiment, time zone or policy.
    A day without traffic still gives all three files, saying so (and no chart images).

    Each chart is also written as ``NAME.svg`` (the very text inlined in the HTML) and listed in
    report.json under ``"plots"``; a chart image left in ``out_dir`` by an earlier report that
    this day has no data for is removed, so the folder holds one consistent report.
    """
    from reports.facts import facts
    from reports.markdown import render_json, render_markdown
    from reports.plots import PLOTS, render_plots
    from reports.render import render_html

    data = await gather(store, experiment, day, policy=policy, tz=tz)
    f = facts(data)
    plots = render_plots(data, f)
    f["plots"] = [f"{name}.svg" for name in plots]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = ReportPaths(
        html=out_dir / "report.html",
        json=out_dir / "report.json",
        markdown=out_dir / "report.md",
        plots=tuple(out_dir / name for name in f["plots"]),
    )
    for name in PLOTS:
        if name not in plots:
            (out_dir / f"{name}.svg").unlink(missing_ok=True)
    for path, svg in zip(paths.plots, plots.values(), strict=True):
        _write_atomic(path, svg)
    _write_atomic(paths.json, render_json(f))
    _write_atomic(paths.markdown, render_markdown(f))
    _write_atomic(paths.html, render_html(f, plots))
    return paths
