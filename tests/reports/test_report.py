"""The report written from a real SQLite store, checked against numbers recomputed from the pairs."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from comparator.store.store import Store
from reports import ReportError, ReportPaths, write_report
from reports.facts import SCHEMA
from reports.plots import PLOTS

from .conftest import DAY, Filled
from .gen import EXPERIMENT, HOSTILE, expected, make_pairs


async def _write(url: str, out: Path, day: Any = DAY, tz: str = "UTC") -> dict[str, Any]:
    store = await Store.open(url, upgrade=False)
    try:
        paths = await write_report(store, EXPERIMENT, day, out, tz=tz)
    finally:
        await store.close()
    return json.loads(paths.json.read_text(encoding="utf-8"))


def _close(got: float | None, want: float, rel: float = 0.011) -> bool:
    if math.isinf(want):
        return got is None  # the quantile falls among the timeouts: not identifiable
    return got is not None and abs(got - want) <= rel * want


def test_report_json_numbers_match_a_recomputation_from_the_pairs(
    filled: Filled, written: ReportPaths
) -> None:
    report = json.loads(written.json.read_text(encoding="utf-8"))
    want = expected(filled.day_pairs)

    assert report["schema"] == SCHEMA
    assert report["empty"] is False
    traffic = report["traffic"]
    assert traffic["pairs"] == want["pairs"]
    for outcome in ("ok", "timeout", "shed"):
        assert traffic["outcomes"]["cand"][outcome] == want["cand_outcomes"].get(outcome, 0)
    assert traffic["teed"] == want["pairs"] - want["cand_outcomes"].get("shed", 0)
    assert traffic["spool_drops"] is None
    assert traffic["spool_drops_note"] == "not reported by proxies"
    assert traffic["paired"]["error"]["cand_rate"] == pytest.approx(want["cand_error_rate"])
    # every answer of this day is readable: all pairs with both sides ok were compared
    assert traffic["coverage"] == {"compared": want["cls_n"], "both_ok": want["cls_n"]}

    cls = report["divergence"]["classification"]
    assert cls["n"] == want["cls_n"]
    assert cls["disagreement_rate"] == pytest.approx(want["disagreement_rate"])
    assert cls["confusion"] == dict(
        sorted(want["confusion"].items(), key=lambda kv: tuple(int(x) for x in kv[0].split(",")))
    )

    lat = report["latency"]
    assert lat["cand"]["completed"] == want["cand_completed"]
    assert lat["cand"]["censored"] == want["cand_censored"]
    for q in ("p50", "p95", "p99"):
        assert _close(lat["prod"][q], want[f"prod_{q}"]), (q, lat["prod"][q], want[f"prod_{q}"])
        assert _close(lat["cand"][q], want[f"cand_{q}"]), (q, lat["cand"][q], want[f"cand_{q}"])

    assert len(report["hourly"]) == 24
    assert sum(h["pairs"] for h in report["hourly"]) == want["pairs"]
    assert report["previous_day"]["numbers"]["pairs"] == len(filled.previous_pairs)
    mem = {(m["side"], m["kind"]): m for m in report["memory"]}
    day_samples = [m for m in filled.memory if m.ts.date() == DAY and m.side == "cand"]
    assert mem[("cand", "rss")]["n"] == len(day_samples)
    assert mem[("cand", "rss")]["max_bytes"] == pytest.approx(
        max(m.value_bytes for m in day_samples)
    )
    assert report["verdict"] is not None and report["verdict"]["checks"]

    top = report["most_divergent"]
    assert 0 < len(top) <= 10
    divs = [p["divergence"] for p in top]
    assert divs == sorted(divs, reverse=True)
    day_ids = {p.request_id for p in filled.day_pairs}
    assert all(p["request_id"] in day_ids for p in top)
    assert report["divergence"]["sample"]["n"] > 0


class _Tags(HTMLParser):
    """Collects every tag and attribute a browser would see."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs.extend(attrs)


def test_request_text_with_markup_is_escaped_never_markup(written: ReportPaths) -> None:
    page = written.html.read_text(encoding="utf-8")

    assert HOSTILE not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "&quot;quoted&quot;" in page or "\\&quot;quoted\\&quot;" in page
    parser = _Tags()
    parser.feed(page)
    assert "script" not in parser.tags
    assert "img" not in parser.tags
    assert not [name for name, _ in parser.attrs if name.lower().startswith("on")]
    # Self-contained: nothing is fetched; SVG links point inside the page or are data: URIs.
    assert all(
        value.startswith(("#", "data:"))
        for name, value in parser.attrs
        if name in ("href", "xlink:href", "src") and value
    )


def test_each_chart_is_also_written_as_its_own_svg_file_listed_in_the_json(
    written: ReportPaths,
) -> None:
    """DESIGN §3: plot images beside the three documents, the same text as inlined in the page."""
    out = written.html.parent
    report = json.loads(written.json.read_text(encoding="utf-8"))
    page = written.html.read_text(encoding="utf-8")
    # A full day of a classifier with memory samples draws every chart.
    assert report["plots"] == [f"{name}.svg" for name in PLOTS]
    assert [p.name for p in written.plots] == report["plots"]
    assert sorted(p.name for p in out.glob("*.svg")) == sorted(report["plots"])
    for name in report["plots"]:
        svg = (out / name).read_text(encoding="utf-8")
        assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>"), name
        assert 'xmlns="http://www.w3.org/2000/svg"' in svg, name  # a standalone image
        assert f"<figure>{svg}</figure>" in page, name  # and still inline in the page


async def test_a_day_without_charts_removes_chart_images_left_by_an_earlier_report(
    filled: Filled, tmp_path: Path
) -> None:
    await _write(filled.url, tmp_path)
    assert (tmp_path / "latency_cdf.svg").is_file()
    report = await _write(filled.url, tmp_path, day=DAY.replace(day=25))
    assert report["plots"] == []
    assert not [name for name in PLOTS if (tmp_path / f"{name}.svg").exists()]


@pytest.mark.parametrize("day", [20, 25], ids=["before-the-start", "after-the-end"])
async def test_an_empty_day_renders_a_no_traffic_report_in_all_three_files(
    filled: Filled, tmp_path: Path, day: int
) -> None:
    report = await _write(filled.url, tmp_path, day=DAY.replace(day=day))
    assert report["empty"] is True
    assert (report["verdict"] is None) == (day == 20)  # no verdict before the experiment began
    assert report["traffic"]["pairs"] == 0
    assert report["hourly"] == [] and report["most_divergent"] == []
    assert "No traffic on this day" in (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "No traffic on this day" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_the_same_database_and_day_give_byte_identical_files_in_separate_processes(
    filled: Filled, written: ReportPaths, tmp_path: Path
) -> None:
    """Hash seeds differ between processes: no set or dict order may leak into the files."""
    for seed in ("1", "2"):
        out = tmp_path / seed
        argv = ["--db", filled.url, "--experiment", EXPERIMENT, "--day", DAY.isoformat()]
        proc = subprocess.run(
            [sys.executable, "-m", "shadowtee", "report", *argv, "--out", str(out)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        for name in ("report.html", "report.json", "report.md", *(p.name for p in written.plots)):
            assert (out / name).read_bytes() == (written.html.parent / name).read_bytes(), name


async def test_a_time_zone_shifts_the_day_to_local_midnights(
    filled: Filled, tmp_path: Path
) -> None:
    report = await _write(filled.url, tmp_path, tz="America/New_York")
    assert report["start"] == "2026-11-22T05:00:00Z" and report["end"] == "2026-11-23T05:00:00Z"
    lo, hi = datetime(2026, 11, 22, 5, tzinfo=UTC), datetime(2026, 11, 23, 5, tzinfo=UTC)
    everything = filled.previous_pairs + filled.day_pairs
    assert report["traffic"]["pairs"] == sum(lo <= p.ts < hi for p in everything)


async def test_an_unknown_experiment_is_a_report_error(filled: Filled, tmp_path: Path) -> None:
    store = await Store.open(filled.url, upgrade=False)
    try:
        with pytest.raises(ReportError, match="no experiment named 'nope'"):
            await write_report(store, "nope", DAY, tmp_path)
    finally:
        await store.close()
    assert not (tmp_path / "report.html").exists()


class _Spy:
    """A real store that records which of its methods a report calls, and how."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        async def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            return await attr(*args, **kwargs)

        return record


async def test_a_report_reads_aggregates_and_a_bounded_sample_never_all_pairs(
    filled: Filled, tmp_path: Path
) -> None:
    from reports.data import DIVERGENT_LIMIT, SAMPLE_LIMIT

    store = await Store.open(filled.url, upgrade=False)
    spy = _Spy(store)
    try:
        await write_report(spy, EXPERIMENT, DAY, tmp_path)  # type: ignore[arg-type]
    finally:
        await store.close()
    names = [name for name, _ in spy.calls]
    assert set(names) <= {
        "get_experiment",
        "hourly_aggregates",
        "memory_samples",
        "sample_pairs",
        "load_verdict_state",
    }, names
    samples = [kw for name, kw in spy.calls if name == "sample_pairs"]
    assert samples and all(kw["limit"] <= max(SAMPLE_LIMIT, DIVERGENT_LIMIT) for kw in samples)


@pytest.mark.postgres
def test_postgresql_gives_the_same_report_as_sqlite(
    pg_url: str, written: ReportPaths, tmp_path: Path
) -> None:
    from .conftest import PREVIOUS, _fill, _memory
    from .conftest import _write as write_once

    name = "report-test-pg"
    pairs = make_pairs(PREVIOUS, experiment=name) + make_pairs(DAY, experiment=name)
    asyncio.run(_fill(pg_url, pairs, _memory(), experiment=name))
    paths = asyncio.run(write_once(pg_url, tmp_path, experiment=name))
    on_pg = json.loads(paths.json.read_text(encoding="utf-8"))
    on_sqlite = json.loads(written.json.read_text(encoding="utf-8"))
    for report in (on_pg, on_sqlite):
        report.pop("experiment")
    assert on_pg == on_sqlite
