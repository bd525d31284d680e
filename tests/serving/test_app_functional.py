"""The OIP v2 surface on a real loopback server, with the bundled digits model and a tiny one."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from serving.app import STATE
from tests.serving.helpers import DIGITS, DIGITS_V1, body, metric, serving_client, settings
from tests.serving.helpers import write_arith_model as write_arith

GOLDEN = [json.loads(line) for line in (DIGITS / "golden.jsonl").read_text().splitlines()]
SHA_V1 = json.loads((DIGITS / "1" / "metadata.json").read_text())["sha256"]


def _direct(x: np.ndarray, model: Path = DIGITS_V1) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return [np.asarray(a) for a in sess.run(["label", "probabilities"], {"input": x})]


async def test_model_metadata_matches_the_onnx_signature() -> None:
    async with serving_client(settings()) as client:
        resp = await client.get("/v2/models/digits")
        doc = await resp.json()
        versioned = await (await client.get("/v2/models/digits/versions/1")).json()
    assert resp.status == 200
    assert doc["name"] == "digits" and doc["versions"] == ["1"]
    assert doc["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert doc["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
    ]
    assert doc["parameters"]["provider"] == "CPUExecutionProvider"
    assert doc["parameters"]["sha256"] == SHA_V1
    assert versioned == doc


async def test_server_health_and_metadata_endpoints_answer() -> None:
    async with serving_client(settings()) as client:
        live = await client.get("/v2/health/live")
        ready = await client.get("/v2/health/ready")
        model_ready = await client.get("/v2/models/digits/ready")
        server = await (await client.get("/v2")).json()
    assert (live.status, ready.status, model_ready.status) == (200, 200, 200)
    assert server["name"] == "shadowtee"


async def test_infer_equals_onnxruntime_run_directly_bit_for_bit() -> None:
    async with serving_client(settings(max_batch=1)) as client:
        for req in GOLDEN[:10]:
            resp = await client.post("/v2/models/digits/infer", json=req)
            doc = await resp.json()
            assert resp.status == 200, doc
            x = np.asarray(req["inputs"][0]["data"], np.float32).reshape(1, 64)
            label, proba = _direct(x)
            assert doc["id"] == req["id"]
            assert doc["model_name"] == "digits" and doc["model_version"] == "1"
            out = {o["name"]: o for o in doc["outputs"]}
            assert out["label"] == {"name": "label", "datatype": "INT64", "shape": [1],
                                    "data": label.tolist()}  # fmt: skip
            got = np.asarray(out["probabilities"]["data"], np.float32).reshape(1, 10)
            np.testing.assert_array_equal(got, proba)


async def test_outputs_selection_returns_only_the_named_outputs() -> None:
    x = np.asarray(GOLDEN[0]["inputs"][0]["data"], np.float32).reshape(1, 64)
    async with serving_client(settings()) as client:
        resp = await client.post(
            "/v2/models/digits/infer", json=body(x, outputs=[{"name": "probabilities"}])
        )
        doc = await resp.json()
    assert [o["name"] for o in doc["outputs"]] == ["probabilities"]
    assert "id" not in doc


async def test_every_response_carries_the_model_identity() -> None:
    bad = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    async with serving_client(settings()) as client:
        responses = [
            await client.get("/v2/models/digits"),
            await client.post("/v2/models/digits/infer", json=GOLDEN[0]),
            await client.post("/v2/models/digits/infer", json=bad),
            await client.get("/v2/models/other"),
            await client.get("/no/such/route"),
            await client.get("/metrics"),
        ]
    assert [r.status for r in responses] == [200, 200, 400, 404, 404, 200]
    for r in responses:
        assert r.headers["X-Model-Name"] == "digits"
        assert r.headers["X-Model-Version"] == "1"
        assert r.headers["X-Model-Sha256"] == SHA_V1


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": [0.0] * 63}],
         "input 'input': shape [1, 63] does not match the model's [-1, 64]"),
        ([{"name": "input", "shape": [1, 64], "datatype": "INT64", "data": [0] * 64}],
         "input 'input': datatype 'INT64' does not match the model's FP32"),
        ([{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 60}],
         "input 'input': shape [1, 64] needs 64 values, data has 60"),
        ([{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}],
         "input 'pixels' is not an input of this model; expected ['input']"),
    ],
)  # fmt: skip
async def test_mismatched_inputs_get_400_naming_the_input(
    inputs: list[dict[str, Any]], message: str
) -> None:
    async with serving_client(settings()) as client:
        resp = await client.post("/v2/models/digits/infer", json={"inputs": inputs})
        doc = await resp.json()
    assert resp.status == 400
    assert doc["error"] == message


async def test_malformed_json_gets_400() -> None:
    async with serving_client(settings()) as client:
        resp = await client.post("/v2/models/digits/infer", data=b'{"inputs": [')
        doc = await resp.json()
    assert resp.status == 400
    assert doc["error"].startswith("malformed JSON")


async def test_unknown_model_or_version_gets_404() -> None:
    async with serving_client(settings()) as client:
        other = await client.post("/v2/models/other/infer", json=GOLDEN[0])
        version = await client.post("/v2/models/digits/versions/9/infer", json=GOLDEN[0])
        doc = await version.json()
    assert other.status == 404 and version.status == 404
    assert "no version '9'" in doc["error"]


async def test_not_ready_until_warm_up_has_run() -> None:
    gate = asyncio.Event()
    reached = asyncio.Event()

    async def before_ready() -> None:
        reached.set()
        await gate.wait()

    s = settings(warmup_runs=3)
    async with serving_client(s, before_ready=before_ready, wait_ready=False) as client:
        await asyncio.wait_for(reached.wait(), 10)
        ready = await client.get("/v2/health/ready")
        model_ready = await client.get("/v2/models/digits/ready")
        infer = await client.post("/v2/models/digits/infer", json=GOLDEN[0])
        live = await client.get("/v2/health/live")
        text = await (await client.get("/metrics")).text()
        assert (ready.status, model_ready.status, infer.status, live.status) == (503, 503, 503, 200)
        assert metric(text, "shadowtee_serving_warmup_runs_total") == 3
        assert metric(text, "shadowtee_serving_ready") == 0
        gate.set()
        for _ in range(200):
            if client.app is not None and client.app[STATE].ready:
                break
            await asyncio.sleep(0.01)
        ready = await client.get("/v2/health/ready")
        infer = await client.post("/v2/models/digits/infer", json=GOLDEN[0])
    assert (ready.status, infer.status) == (200, 200)


async def test_full_queue_answers_503_with_retry_after() -> None:
    s = settings(max_batch=1, max_queue=1, max_delay_ms=0)
    async with serving_client(s) as client:
        assert client.app is not None
        served = client.app[STATE].current
        assert served is not None
        hold, holding = threading.Event(), threading.Event()

        def block() -> None:
            holding.set()
            hold.wait(10)

        # Occupy the inference thread so the next request stays queued.
        blocker = asyncio.get_running_loop().run_in_executor(served.batcher.executor, block)
        await asyncio.to_thread(holding.wait, 10)
        first = asyncio.ensure_future(client.post("/v2/models/digits/infer", json=GOLDEN[0]))
        second = asyncio.ensure_future(client.post("/v2/models/digits/infer", json=GOLDEN[1]))
        # The worker holds one request (waiting for the thread); the other fills the queue.
        for _ in range(500):
            if served.batcher.depth == 1:
                break
            await asyncio.sleep(0.01)
        assert served.batcher.depth == 1
        resp = await client.post("/v2/models/digits/infer", json=GOLDEN[2])
        doc = await resp.json()
        hold.set()
        await blocker
        r1, r2 = await first, await second
        statuses = (r1.status, r2.status)
        text = await (await client.get("/metrics")).text()
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert "queue full" in doc["error"]
    assert statuses == (200, 200)
    assert metric(text, "shadowtee_serving_shed_total") >= 1


async def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(tmp_path: Path) -> None:
    model = write_arith(tmp_path / "arith.onnx")
    s = settings(model, name="arith", max_batch=64, max_delay_ms=50)
    sizes = [1, 2, 3, 5, 1, 8, 2, 4, 1, 6, 3, 1, 7, 2, 1, 9]
    async with serving_client(s) as client:

        async def call(i: int, n: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
            x = (np.arange(n * 3, dtype=np.float32).reshape(n, 3) + 1000 * i) / 7
            y = np.arange(n, dtype=np.int64) + 1000 * i
            req = {
                "id": f"r{i}",
                "inputs": [
                    {"name": "x", "shape": [n, 3], "datatype": "FP32", "data": x.ravel().tolist()},
                    {"name": "y", "shape": [n], "datatype": "INT64", "data": y.tolist()},
                ],
            }
            resp = await client.post("/v2/models/arith/infer", json=req)
            assert resp.status == 200
            return x, y, await resp.json()

        results = await asyncio.gather(*(call(i, n) for i, n in enumerate(sizes)))
        text = await (await client.get("/metrics")).text()
    for i, (x, y, doc) in enumerate(results):
        assert doc["id"] == f"r{i}"
        out = {o["name"]: o for o in doc["outputs"]}
        assert out["doubled"]["shape"] == [len(x), 3]
        np.testing.assert_array_equal(
            np.asarray(out["doubled"]["data"], np.float32), (x * 2).ravel()
        )
        assert out["next"]["data"] == (y + 1).tolist()
    batches = metric(text, "shadowtee_serving_batch_size_count")
    rows = metric(text, "shadowtee_serving_batch_size_sum")
    assert rows == sum(sizes)
    assert batches < len(sizes), "no batch held more than one request"


async def test_digits_under_concurrency_matches_onnxruntime() -> None:
    xs = np.asarray([g["inputs"][0]["data"] for g in GOLDEN[:32]], np.float32)
    label, proba = _direct(xs)
    async with serving_client(settings(max_batch=16, max_delay_ms=20)) as client:

        async def call(i: int) -> dict[str, Any]:
            resp = await client.post("/v2/models/digits/infer", json=GOLDEN[i])
            return dict(await resp.json())

        docs = await asyncio.gather(*(call(i) for i in range(32)))
        text = await (await client.get("/metrics")).text()
    for i, doc in enumerate(docs):
        out = {o["name"]: o["data"] for o in doc["outputs"]}
        assert out["label"] == [int(label[i])]
        np.testing.assert_allclose(out["probabilities"], proba[i], rtol=1e-6, atol=1e-7)
    assert metric(text, "shadowtee_serving_batch_size_count") < 32


async def test_metrics_expose_rss_provider_and_output_health() -> None:
    async with serving_client(settings()) as client:
        await client.post("/v2/models/digits/infer", json=GOLDEN[0])
        resp = await client.get("/metrics")
        text = await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert metric(text, "process_resident_memory_bytes") > 0
    assert 'provider="CPUExecutionProvider"' in text and 'reason="requested"' in text
    # Each probability row sums to 1 over 10 classes, so the mean value is 0.1.
    assert metric(text, 'shadowtee_serving_output_mean{output="probabilities"}') == pytest.approx(
        0.1, rel=1e-5
    )
    assert metric(text, 'shadowtee_serving_output_nan_total{output="probabilities"}') == 0
    assert metric(text, "shadowtee_serving_queue_depth") == 0
    assert 'shadowtee_serving_requests_total{status="200"} 1.0' in text
    assert "shadowtee_serving_gpu_memory_used_bytes" not in text  # CPU: no GPU series
