"""The report's segment section (table + segment × hour heatmap) and the drift of the window,
through the real ingest path: two days of the known experiment of :mod:`.gen` with segments; the
day has a planted shift of production's prediction mix and of one numeric input feature, and
one tenant whose candidate answers another class half the time."""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from comparator.store.store import Store
from comparator.wire import Pair
from reports import ReportPaths, write_report

from .conftest import DAY, PREVIOUS
from .gen import EXPERIMENT, _oip, make_pairs


def _segmented(pairs: list[Pair], *, shift: bool) -> list[Pair]:
    rng = random.Random(11 if shift else 5)
    out = []
    for i, p in enumerate(pairs):
        data = p.model_dump(mode="json")
        tenant = "bad" if i % 10 == 0 else f"t{i % 7}"
        data["segments"] = {"tenant": tenant, "parity": "even" if i % 2 == 0 else "odd"}
        if shift and rng.random() < 0.5:  # production answers class 0 far more often
            data["prod"]["body"] = _oip([0.9] + [0.1 / 9] * 9)
        if shift:  # the second input feature triples
            x = data["request"]["body"]["inputs"][0]
            x["data"] = [x["data"][0], x["data"][1] * 3 + 40]
        cand = data["candidate"]
        if tenant == "bad" and cand.get("status") == 200 and i % 20 == 0:
            cand["body"] = _oip([0.01] * 9 + [0.91])
        elif (
            shift
            and cand.get("status") == 200
            and data["prod"]["body"]["outputs"][0]["data"][0] == 0.9
        ):
            cand["body"] = data["prod"]["body"]
        out.append(Pair.model_validate(data))
    return out


async def _build(url: str, out: Path) -> ReportPaths:
    store = await Store.open(url, store_bodies=True)
    try:
        pairs = _segmented(make_pairs(PREVIOUS, experiment=EXPERIMENT), shift=False)
        pairs += _segmented(make_pairs(DAY, experiment=EXPERIMENT), shift=True)
        for i in range(0, len(pairs), 300):
            await store.ingest(pairs[i : i + 300])
        return await write_report(store, EXPERIMENT, DAY, out)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ReportPaths:
    db = tmp_path_factory.mktemp("segdb") / "db.sqlite"
    return asyncio.run(_build(f"sqlite:///{db}", tmp_path_factory.mktemp("segreport")))


def test_segment_table_is_sorted_and_heatmap_covers_every_hour(report: ReportPaths) -> None:
    f: dict[str, Any] = json.loads(report.json.read_text())
    dims = {d["dimension"]: d for d in f["segments"]}
    assert set(dims) == {"parity", "tenant"}
    tenant = dims["tenant"]
    values = [r["value"] for r in tenant["rows"]]
    assert sorted(values) == sorted(["bad", *(f"t{i}" for i in range(7))])
    rows = {r["value"]: r for r in tenant["rows"]}
    assert rows["bad"]["top1_disagreement"] > max(
        rows[f"t{i}"]["top1_disagreement"] for i in range(7)
    )
    assert sum(r["pairs"] for r in tenant["rows"]) == f["traffic"]["pairs"]
    # sorted by distance from the margin, farthest beyond first
    dist = [r["worst"]["distance"] for r in tenant["rows"] if r["worst"]]
    dist = [d for d in dist if d is not None]
    assert dist == sorted(dist, reverse=True)
    heat = tenant["heatmap"]
    assert len(heat["hours"]) == 24 and heat["values"] == values
    assert all(len(row) == 24 for row in heat["cells"])
    assert sum(sum(row) for row in heat["pairs"]) == f["traffic"]["pairs"]


def test_drift_of_a_planted_shift_is_measured_and_warned(report: ReportPaths) -> None:
    f = json.loads(report.json.read_text())
    d = f["drift"]
    assert d["prediction_mix"]["psi"] > 0.25 and d["prediction_mix"]["level"] == "large"
    top = d["features"][0]
    assert top["feature"] == "/inputs/x/1" and top["psi"] > 0.25
    stable = [x for x in d["features"] if x["feature"] == "/inputs/x/0"]
    assert stable and stable[0]["psi"] < 0.1  # the hour of day did not move
    assert len(d["warnings"]) == 2
    assert "prediction mix" in d["warnings"][0] and "/inputs/x/1" in d["warnings"][1]
    assert "Warning" in report.markdown.read_text()


def test_the_known_experiment_without_a_shift_warns_of_nothing(
    filled: Any, written: ReportPaths
) -> None:
    d = json.loads(written.json.read_text())["drift"]
    assert d["prediction_mix"]["psi"] is not None and d["prediction_mix"]["psi"] < 0.1
    assert d["warnings"] == []


class _Dom:
    """The sections of a page and the text of its segment section, from Chromium's DOM dump or
    from the file itself."""

    def __init__(self, html: str) -> None:
        self.html = html

    def section(self, ident: str) -> str:
        m = re.search(rf"<section id=['\"]{ident}['\"]>(.*?)</section>", self.html, re.S)
        assert m, f"no section {ident}"
        return m.group(1)


def _check_page(html: str) -> None:
    dom = _Dom(html)
    seg = dom.section("segments")
    assert "<h3>tenant</h3>" in seg and "<h3>parity</h3>" in seg
    assert seg.count('class="heat"') == 24 * (8 + 2)
    assert "<code>bad</code>" in seg
    drift = dom.section("drift")
    assert "drift-warning" in drift and "/inputs/x/1" in drift


def test_the_segment_and_drift_sections_are_in_the_page(report: ReportPaths) -> None:
    _check_page(report.html.read_text())


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)"
)
def test_the_segment_section_renders_in_chromium(report: ReportPaths, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            report.html.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    _check_page(proc.stdout)


async def _regression_report(url: str, out: Path, shift: float) -> dict[str, Any]:
    """Two days of the simulation's regression pairs; the second day's outputs (both sides)
    moved by ``shift``."""
    from datetime import UTC, date, datetime, timedelta

    import numpy as np

    from comparator.measure.normalize import NormalizeConfig
    from comparator.wire import PairBatch
    from tests.comparator import test_simulations as sim

    day = date(2026, 11, 20)
    start = datetime(2026, 11, 19, tzinfo=UTC)
    rng = np.random.default_rng(3)
    store = await Store.open(url, normalize_config=lambda n: NormalizeConfig(task="regression"))
    try:
        for hour in range(48):
            raw = sim.hour_of_pairs(rng, sim.Plant(task="regression"), "reg", start, hour)
            for p in raw:
                for side in (p["prod"], p["candidate"]):
                    if hour >= 24 and side.get("status") == 200:
                        out0 = side["body"]["outputs"][0]
                        side["body"] = {"outputs": [{**out0, "data": [out0["data"][0] + shift]}]}
            await store.ingest(list(PairBatch.model_validate({"pairs": raw}).pairs))
        assert start + timedelta(days=1) == datetime(2026, 11, 20, tzinfo=UTC)
        paths = await write_report(store, "reg", day, out)
    finally:
        await store.close()
    return dict(json.loads(paths.json.read_text())["drift"])


@pytest.mark.parametrize(("shift", "moved"), [(0.0, False), (3.0, True)])
def test_drift_of_regression_outputs_is_binned(tmp_path: Path, shift: float, moved: bool) -> None:
    d = asyncio.run(_regression_report(f"sqlite:///{tmp_path}/r.sqlite", tmp_path, shift))
    mix = d["prediction_mix"]
    # compared pairs a day: 2 400 less the few errors and timeouts
    assert mix["of"] == "binned outputs" and all(2300 < n <= 2400 for n in mix["n"])
    if moved:
        assert mix["psi"] > 0.25 and d["warnings"]
    else:
        assert mix["psi"] < 0.1 and not d["warnings"]
