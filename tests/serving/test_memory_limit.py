"""``shadowtee serve`` exports its container's memory limit, read from a (fake) cgroup file, in the
form the comparator's memory sampler reads as the limit of the RSS samples."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from comparator.sampler import parse_memory
from serving.metrics import ServingMetrics, memory_limit

TS = datetime(2026, 12, 1, tzinfo=UTC)


def _exposition(paths: list[Path]) -> str:
    metrics = ServingMetrics(CollectorRegistry(), memory_limit_paths=paths)
    return generate_latest(metrics.registry).decode()


def test_cgroup_v2_limit_is_exported_and_read_by_the_sampler(tmp_path: Path) -> None:
    v2 = tmp_path / "memory.max"
    v2.write_text("2147483648\n")
    text = _exposition([v2, tmp_path / "absent"])
    assert "shadowtee_serving_memory_limit_bytes 2.147483648e+09" in text
    (rss,) = [s for s in parse_memory(text, "cand", TS) if s.kind == "rss"]
    assert rss.limit_bytes == 2147483648.0 and rss.value_bytes > 0


def test_cgroup_v1_limit_when_v2_is_absent(tmp_path: Path) -> None:
    v1 = tmp_path / "memory.limit_in_bytes"
    v1.write_text("536870912\n")
    assert memory_limit([tmp_path / "memory.max", v1]) == 536870912.0


@pytest.mark.parametrize("content", ["max\n", "9223372036854771712\n", "0\n", "garbage\n"])
def test_no_limit_exports_no_sample(tmp_path: Path, content: str) -> None:
    path = tmp_path / "limit"
    path.write_text(content)
    assert memory_limit([path]) is None
    text = _exposition([path])
    assert "shadowtee_serving_memory_limit_bytes " not in text
    (rss,) = [s for s in parse_memory(text, "cand", TS) if s.kind == "rss"]
    assert rss.limit_bytes is None


def test_the_limit_is_read_at_scrape_time(tmp_path: Path) -> None:
    path = tmp_path / "memory.max"
    path.write_text("max\n")
    metrics = ServingMetrics(CollectorRegistry(), memory_limit_paths=[path])
    assert b"memory_limit_bytes " not in generate_latest(metrics.registry)
    path.write_text("1073741824\n")
    assert b"memory_limit_bytes 1.073741824e+09" in generate_latest(metrics.registry)
