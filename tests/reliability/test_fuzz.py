"""Fuzzing the two public write surfaces: serving's infer and the comparator's ingest.

Property: every input gets a 4xx or a correct answer — never a 5xx, never a dropped connection —
and input the comparator refuses leaves its database exactly as it was (row counts before/after).
Both servers are real aiohttp apps on loopback (a background loop), hit over HTTP by httpx.
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from comparator.app import create_app as comparator_app
from comparator.settings import ComparatorSettings
from serving import ServeSettings
from serving import create_app as serving_app
from tests.reliability.fakes import LoopThread, wait_until

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits" / "1" / "model.onnx"
INFER = "/v2/models/digits/infer"
TOKEN = "fuzz-token-123"
# Derandomized and without an example database: the same 60 cases on every run and machine.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
TABLES = ("experiments", "pairs", "hourly_aggregates")

# --- strategies ---------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


@st.composite
def oip_requests(draw: st.DrawFn) -> tuple[bytes, np.ndarray | None]:
    """An OIP body (mostly near-valid) and, when it is exactly valid, the input array."""
    if draw(st.booleans()):
        n = draw(st.integers(min_value=1, max_value=4))
        x = np.asarray(
            draw(st.lists(st.floats(0, 16, width=32), min_size=n * 64, max_size=n * 64)),
            dtype=np.float32,
        ).reshape(n, 64)
        doc: dict[str, Any] = {
            "inputs": [
                {"name": "input", "shape": [n, 64], "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
        if draw(st.booleans()):
            return json.dumps(doc).encode(), x
        # One targeted corruption of a valid request.
        target = draw(st.sampled_from(["name", "shape", "datatype", "data", "extra", "inputs"]))
        value = draw(json_values)
        if target == "extra":
            doc[draw(st.text(min_size=1, max_size=8))] = value
        elif target == "inputs":
            doc["inputs"] = value
        else:
            doc["inputs"][0][target] = value
        return json.dumps(doc).encode(), None
    if draw(st.booleans()):
        return json.dumps(draw(json_values)).encode(), None
    return draw(st.binary(max_size=300)), None


# --- servers -----------------------------------------------------------------------------------


@dataclass
class Comparator:
    url: str
    db: Path

    def counts(self) -> dict[str, int]:
        with sqlite3.connect(self.db) as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def serving_url(loop_thread: LoopThread) -> str:
    s = ServeSettings(
        model=str(DIGITS), name="digits", version="1", listen="127.0.0.1:0", device="cpu",
        warmup_runs=1,
    )  # fmt: skip
    url = loop_thread.serve(serving_app(s))

    def ready() -> bool:
        return httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200

    wait_until(ready, "serving ready", 60)
    return url


@pytest.fixture(scope="module")
def comparator(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Comparator:
    db = tmp_path_factory.mktemp("fuzzdb") / "c.db"
    s = ComparatorSettings(listen="127.0.0.1:0", db=f"sqlite:///{db}", token=SecretStr(TOKEN))
    return Comparator(loop_thread.serve(comparator_app(s)), db)


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])


# --- serving -----------------------------------------------------------------------------------


@FUZZ
@given(case=oip_requests(), ctype=st.sampled_from(["application/json", "text/plain", ""]))
def test_serving_infer_answers_4xx_or_the_right_answer(
    serving_url: str, session: ort.InferenceSession, case: tuple[bytes, Any], ctype: str
) -> None:
    body, x = case
    headers = {"Content-Type": ctype} if ctype else {}
    resp = httpx.post(serving_url + INFER, content=body, headers=headers, timeout=30)
    assert resp.status_code < 500, (resp.status_code, resp.text[:300], body[:300])
    if resp.status_code != 200:
        assert 400 <= resp.status_code < 500
        return
    doc = resp.json()
    outputs = {o["name"]: o for o in doc["outputs"]}
    for out in outputs.values():
        assert len(out["data"]) == math.prod(out["shape"])
    if x is not None:
        label, probs = session.run(None, {"input": x})
        assert outputs["label"]["data"] == np.asarray(label).ravel().tolist()
        got = np.asarray(outputs["probabilities"]["data"], dtype=np.float64)
        assert np.allclose(got, np.asarray(probs, dtype=np.float64).ravel(), atol=1e-6)


# --- comparator ingest -------------------------------------------------------------------------

_ids = itertools.count()


def _valid_pair(rid: str) -> dict[str, Any]:
    return {
        "v": 1, "request_id": rid, "experiment": "fuzz", "ts": "2026-11-22T10:00:00.000Z",
        "route": "/v2/models/digits/infer", "request": {"sha256": "0" * 64, "body": None},
        "prod": {"outcome": "ok", "status": 200, "latency_ms": 3.0,
                 "body": {"outputs": [{"name": "label", "shape": [1], "datatype": "INT64", "data": [3]}]}},
        "candidate": {"outcome": "ok", "status": 200, "latency_ms": 4.0,
                      "body": {"outputs": [{"name": "label", "shape": [1], "datatype": "INT64", "data": [3]}]}},
    }  # fmt: skip


@st.composite
def ingest_bodies(draw: st.DrawFn) -> tuple[bytes, str, bool]:
    """``(body, content type, expected valid)``: valid batches, targeted corruptions, junk."""
    kind = draw(st.sampled_from(["valid", "corrupt", "corrupt", "junk_json", "junk_bytes"]))
    if kind in ("valid", "corrupt"):
        pairs = [_valid_pair(f"fuzz-{next(_ids)}") for _ in range(draw(st.integers(1, 3)))]
        if kind == "corrupt":
            victim = pairs[draw(st.integers(0, len(pairs) - 1))]
            path = draw(st.sampled_from([
                ("v",), ("request_id",), ("experiment",), ("ts",), ("route",), ("request", "sha256"),
                ("prod", "outcome"), ("prod", "status"), ("prod", "latency_ms"),
                ("candidate", "status"), ("candidate", "body_bytes"), ("extra_key",),
            ]))  # fmt: skip
            target = victim
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = draw(
                st.one_of(json_values, st.just(-1), st.just(""), st.just("x" * 5000))
            )
        if draw(st.booleans()):
            body = b"".join(json.dumps(p).encode() + b"\n" for p in pairs)
            return body, "application/x-ndjson", kind == "valid"
        return json.dumps({"pairs": pairs}).encode(), "application/json", kind == "valid"
    if kind == "junk_json":
        return json.dumps(draw(json_values)).encode(), "application/json", False
    ctype = draw(st.sampled_from(["application/json", "application/x-ndjson", "text/plain"]))
    return draw(st.binary(max_size=300)), ctype, False


@FUZZ
@given(case=ingest_bodies())
def test_comparator_ingest_answers_4xx_or_stores_and_rejections_change_nothing(
    comparator: Comparator, case: tuple[bytes, str, bool]
) -> None:
    body, ctype, valid = case
    before = comparator.counts()
    resp = httpx.post(
        comparator.url + "/v1/pairs",
        content=body,
        headers={"Content-Type": ctype, "Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert resp.status_code < 500, (resp.status_code, resp.text[:300], body[:300])
    after = comparator.counts()
    if resp.status_code >= 400:
        assert after == before  # a refused batch leaves no trace
        return
    # A corruption can still be a valid pair (a different valid status, say); then it is stored.
    inserted = resp.json()["inserted"]
    assert after["pairs"] == before["pairs"] + inserted
    if valid:
        assert inserted == resp.json()["received"] > 0
