"""A stock tritonclient, binary tensors by default, through the real proxy: outputs are compared.

tritonclient's HTTP client sends its inputs and asks for its outputs in the OIP binary tensor
extension unless told otherwise, so neither side's answer is JSON. Through a real ``shadowtee
proxy`` in front of two ``shadowtee serve`` (v1 production; v2 good or v3 bad candidate) and a real
``shadowtee comparator`` (demo policy, token), every pair must be compared: top-1 values present
for every pair, and the bad candidate REJECTed on top-1 disagreement, never PROMOTEd blind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from comparator.judge.policy import DEMO_POLICY_PATH
from shadowtee.traffic import digits_requests
from tests.e2e.helpers import INFER, MODELS
from tests.reliability.fakes import free_port, wait_until
from tests.reliability.proxy_process import ProxyProcess

httpclient = pytest.importorskip(
    "tritonclient.http", reason="tritonclient[http] is not installed (optional test dependency)"
)

SHADOWTEE = str(Path(sys.executable).with_name("shadowtee"))
TOKEN = "binary-tensors-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REQUESTS = 300  # the demo policy needs 200 units per check


def _rows(n: int) -> np.ndarray:
    bodies, _ = digits_requests(MODELS.parent)
    return np.array(
        [json.loads(bodies[i % len(bodies)])["inputs"][0]["data"] for i in range(n)], np.float32
    )


@pytest.fixture
def comparator(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWTEE_")}
    env["SHADOWTEE_COMPARATOR__TOKEN"] = TOKEN
    log = open(tmp_path / "comparator.log", "wb")  # noqa: SIM115 - closed once started
    proc = subprocess.Popen(
        [SHADOWTEE, "comparator", "--listen", f"127.0.0.1:{port}",
         "--db", f"sqlite:///{tmp_path}/c.db", "--policy", str(DEMO_POLICY_PATH),
         "--verdict-interval-s", "0"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    log.close()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "comparator.log").read_text())
        try:
            return httpx.get(url + "/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, "the comparator ready", 60)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _shadow(
    tmp_path: Path, servers: dict[str, str], comparator: str, candidate: str
) -> tuple[str, np.ndarray]:
    """Send the digits rows one request each through the proxy with a stock tritonclient;
    return the experiment's name and the labels the client received."""
    experiment = f"digits-v1-vs-v{candidate}"
    proxy = ProxyProcess(
        prod=servers["1"].removesuffix(INFER),
        candidate=servers[candidate].removesuffix(INFER),
        comparator=comparator,
        spool_dir=tmp_path / "spool",
        experiment=experiment,
        env={"SHADOWTEE_PROXY__COMPARATOR_TOKEN": TOKEN},
    )
    try:
        client = httpclient.InferenceServerClient(proxy.url.removeprefix("http://"))
        labels = []
        try:
            for row in _rows(REQUESTS):
                inp = httpclient.InferInput("input", [1, 64], "FP32")
                inp.set_data_from_numpy(row[None, :])  # binary_data=True, the default
                result = client.infer("digits", [inp])  # every output comes back binary
                labels.append(int(result.as_numpy("label")[0]))
                assert all(
                    "binary_data_size" in o.get("parameters", {})
                    for o in result.get_response()["outputs"]
                )
        finally:
            client.close()
        assert proxy.terminate() == 0  # flushes the last pairs
    finally:
        proxy.stop()

    def stored() -> bool:
        doc = httpx.get(f"{comparator}/v1/experiments", headers=AUTH, timeout=5).json()
        return any(e["name"] == experiment and e["n_pairs"] == REQUESTS for e in doc["experiments"])

    wait_until(stored, f"{REQUESTS} pairs stored", 60)
    return experiment, np.array(labels)


def _summary_and_verdict(comparator: str, experiment: str) -> tuple[Any, Any]:
    base = f"{comparator}/v1/experiments/{experiment}"
    summary = httpx.get(base + "/summary", headers=AUTH, timeout=30).json()
    verdict = httpx.get(base + "/verdict", headers=AUTH, timeout=30).json()
    return summary, verdict


def _check(verdict: Any, check_id: str) -> Any:
    return next(c for c in verdict["checks"] if c["id"] == check_id)


def test_the_client_gets_production_and_every_pair_is_compared(
    digits_servers: dict[str, str], comparator: str, tmp_path: Path
) -> None:
    experiment, labels = _shadow(tmp_path, digits_servers, comparator, "2")
    sess = ort.InferenceSession(
        str(MODELS / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_array_equal(labels, sess.run(["label"], {"input": _rows(REQUESTS)})[0])
    summary, verdict = _summary_and_verdict(comparator, experiment)
    cls = summary["divergence"]["classification"]
    assert cls["n"] == REQUESTS, summary  # top-1 compared on every pair
    assert cls["agreement"] == 1.0  # v2 agrees with v1 on these rows (test_demo checks it)
    assert summary["divergence"]["invalid"]["00"] == REQUESTS
    assert verdict["decision"] != "REJECT", verdict
    assert _check(verdict, "top1_disagreement")["status"] not in ("NODATA", "FAIL")


def test_the_bad_candidate_is_rejected_on_top1_not_promoted_blind(
    digits_servers: dict[str, str], comparator: str, tmp_path: Path
) -> None:
    experiment, _ = _shadow(tmp_path, digits_servers, comparator, "3")
    summary, verdict = _summary_and_verdict(comparator, experiment)
    cls = summary["divergence"]["classification"]
    assert cls["n"] == REQUESTS, summary
    assert 0.6 < cls["agreement"] < 0.9, summary  # about 24% of top-1 classes differ
    assert verdict["decision"] == "REJECT", verdict
    assert _check(verdict, "top1_disagreement")["status"] == "FAIL"
    assert any("top1" in r for r in verdict["reasons"]), verdict["reasons"]
