"""The pure parts of replay: reading the request file, building pairs, checking URLs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from comparator.replay import (
    ReplayError,
    ReplayRequest,
    _side,
    _target,
    build_pair,
    check_url,
    load_requests,
)
from comparator.wire import Pair
from contract.outcomes import Outcome
from tests.e2e.helpers import GOLDEN


def test_the_committed_golden_set_holds_100_infer_bodies() -> None:
    requests = load_requests(GOLDEN)
    assert len(requests) == 100
    assert all(r.path is None and r.parsed["inputs"][0]["name"] == "input" for r in requests)


def test_a_line_with_path_and_body_sends_the_body_to_that_path(tmp_path: Path) -> None:
    f = tmp_path / "r.jsonl"
    f.write_text('\n{"path": "/predict", "body": {"x": [1]}}\n{"x": 2}\n', encoding="utf-8")
    first, second = load_requests(f)
    assert (first.line, first.path, first.parsed) == (2, "/predict", {"x": [1]})
    assert json.loads(first.body) == {"x": [1]}
    assert (second.line, second.path, second.parsed) == (3, None, {"x": 2})
    assert _target("http://h:1/ignored", first, "--prod") == "http://h:1/predict"
    assert (
        _target("http://h:1/v2/models/m/infer", second, "--prod") == "http://h:1/v2/models/m/infer"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no requests"),
        ("{oops\n", ":1: not JSON"),
        ('{"a": 1}\n[1]\n', ":2: expected a JSON object"),
        ('{"path": "predict", "body": {}}\n', ':1: "path" must start with /'),
    ],
)
def test_a_bad_request_file_is_named_with_its_line(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "r.jsonl"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ReplayError, match="--requests") as err:
        load_requests(f)
    assert message in str(err.value)


def test_a_url_without_a_path_needs_a_path_in_the_line() -> None:
    request = ReplayRequest(line=7, path=None, body=b"{}", parsed={})
    with pytest.raises(ReplayError, match=r"--candidate: .* line 7"):
        _target("http://127.0.0.1:8000", request, "--candidate")


@pytest.mark.parametrize("url", ["ftp://h/x", "127.0.0.1:80/x", "http:///x", "http://h:99999/x"])
def test_check_url_names_the_option(url: str) -> None:
    with pytest.raises(ReplayError, match=r"^--prod: "):
        check_url("--prod", url)


def test_a_pair_is_a_valid_wire_pair_with_the_request_hash() -> None:
    request = ReplayRequest(line=1, path=None, body=b'{"x":1}', parsed={"x": 1})
    prod = _side(Outcome.OK, status=200, latency_ms=1.5, version="1", raw=b'{"y": 2}')
    cand = _side(Outcome.OK, status=200, latency_ms=2.5, version="2", raw=b"not json")
    pair = build_pair(request, "/r", "golden", prod, cand, include_request_body=True)
    again = Pair.model_validate_json(pair.model_dump_json())
    assert again.request.sha256 == hashlib.sha256(b'{"x":1}').hexdigest()
    assert again.request.body == {"x": 1}
    assert again.prod.body == {"y": 2} and again.prod.body_bytes is None
    # A body that is not JSON travels as null with its size: the comparator counts it invalid.
    assert again.candidate.body is None and again.candidate.body_bytes == 8


def test_a_timeout_carries_the_deadline_as_its_latency() -> None:
    side = _side(Outcome.TIMEOUT, latency_ms=250.0, error="deadline 250 ms")
    assert side.outcome is Outcome.TIMEOUT and side.latency_ms == 250.0 and side.body is None
