"""Prometheus rules pass promtool; rules and dashboard only use metric names our services expose."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yaml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yaml"
DASHBOARD = DEPLOY / "grafana" / "shadowtee-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)"
)
METRIC = re.compile(r"\b(shadowtee_[a-z0-9_]+)")


def _promtool(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    res = _promtool("check", "rules", RULES, cwd=RULES.parent)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_rules_pass_their_unit_tests() -> None:
    res = _promtool("test", "rules", RULES_TEST, cwd=RULES.parent)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_a_broken_rule_fails_promtool(tmp_path: Path) -> None:
    broken = tmp_path / "rules.yaml"
    broken.write_text(RULES.read_text().replace("> 0.05", "> > 0.05", 1))
    assert _promtool("check", "rules", broken, cwd=tmp_path).returncode != 0


@needs_promtool
def test_a_rule_whose_threshold_drifts_fails_its_unit_test(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES.read_text().replace("> 0.05", "> 0.5", 1))
    (tmp_path / "rules_test.yaml").write_text(RULES_TEST.read_text())
    assert _promtool("test", "rules", "rules_test.yaml", cwd=tmp_path).returncode != 0


def referenced_metrics(text: str) -> set[str]:
    names = set(METRIC.findall(text))
    # Histogram series are exposed as one family with _bucket/_sum/_count samples.
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def dashboard_exprs(path: Path) -> str:
    dash = json.loads(path.read_text())
    return "\n".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))


def test_dashboard_is_valid_json_with_unique_panel_ids() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "shadowtee"
    assert all(p["targets"] for p in dash["panels"])
