"""A stock OIP v2 client -- tritonclient's HTTP client -- drives a real ``shadowtee serve``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest

from tests.serving.helpers import DIGITS, DIGITS_V1
from tests.serving.test_cli_functional import _start, _wait_ready

httpclient = pytest.importorskip(
    "tritonclient.http", reason="tritonclient[http] is not installed (optional test dependency)"
)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    proc, base = _start("--model", str(DIGITS_V1), "--name", "digits", "--version", "1")
    try:
        _wait_ready(base)
        yield base
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stderr is not None:
            proc.stderr.close()


def test_stock_client_reads_health_and_metadata(url: str) -> None:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits")
        meta = client.get_model_metadata("digits")
        server = client.get_server_metadata()
    finally:
        client.close()
    assert server["name"] == "shadowtee" and "binary_tensor_data" in server["extensions"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]


def test_stock_client_infer_equals_onnxruntime(url: str) -> None:
    lines = (DIGITS / "golden.jsonl").read_text().splitlines()[:8]
    x = np.asarray([json.loads(ln)["inputs"][0]["data"] for ln in lines], np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    outs = [
        httpclient.InferRequestedOutput(n, binary_data=False) for n in ("label", "probabilities")
    ]
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        result = client.infer("digits", [inp], outputs=outs, request_id="triton-1")
    finally:
        client.close()
    sess = ort.InferenceSession(str(DIGITS_V1), providers=["CPUExecutionProvider"])
    label, proba = sess.run(["label", "probabilities"], {"input": x})
    np.testing.assert_array_equal(result.as_numpy("label"), label)
    np.testing.assert_allclose(result.as_numpy("probabilities"), proba, rtol=1e-6)
    assert result.get_response()["id"] == "triton-1"


def test_stock_client_binary_tensors_by_default(url: str) -> None:
    x = np.random.default_rng(3).uniform(0, 16, (5, 64)).astype(np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary_data=True: the binary tensor extension
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        result = client.infer("digits", [inp])  # no outputs named: every output comes back binary
    finally:
        client.close()
    sess = ort.InferenceSession(str(DIGITS_V1), providers=["CPUExecutionProvider"])
    label, proba = sess.run(["label", "probabilities"], {"input": x})
    np.testing.assert_array_equal(result.as_numpy("label"), label)
    np.testing.assert_allclose(result.as_numpy("probabilities"), proba, rtol=1e-6)
    params = {o["name"]: o.get("parameters") for o in result.get_response()["outputs"]}
    assert params == {"label": {"binary_data_size": 40}, "probabilities": {"binary_data_size": 200}}
