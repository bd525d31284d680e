"""The CUDA provider, on a machine that has one; skipped with the reason elsewhere."""

from __future__ import annotations

import pytest

from serving.model import cuda_device_present, load_model, select_provider
from tests.serving.helpers import DIGITS_V1, body, metric, serving_client, settings

HAS_CUDA = cuda_device_present()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_auto_falls_back_to_cpu_without_a_device() -> None:
    providers, reason = select_provider("auto", 1 << 30)
    assert providers == ["CPUExecutionProvider"]
    assert reason in ("no CUDA device", "onnxruntime has no CUDA provider")
    model = load_model(DIGITS_V1, name="digits", version="1", device="auto")
    assert model.provider == "CPUExecutionProvider" and model.device == "cpu"


@needs_gpu
def test_auto_uses_cuda_with_a_memory_limit() -> None:
    providers, _ = select_provider("auto", 1 << 30)
    assert providers[0] == ("CUDAExecutionProvider", {"device_id": 0, "gpu_mem_limit": 1 << 30})
    model = load_model(DIGITS_V1, name="digits", version="1", device="cuda")
    assert model.provider == "CUDAExecutionProvider"


@needs_gpu
async def test_server_on_cuda_reports_provider_and_gpu_memory() -> None:
    import numpy as np

    async with serving_client(settings(device="cuda")) as client:
        resp = await client.post(
            "/v2/models/digits/infer", json=body(np.zeros((4, 64), np.float32))
        )
        meta = await (await client.get("/v2/models/digits")).json()
        text = await (await client.get("/metrics")).text()
    assert resp.status == 200
    assert meta["parameters"]["provider"] == "CUDAExecutionProvider"
    assert 'device="cuda"' in text
    assert metric(text, "shadowtee_serving_gpu_memory_total_bytes") > 0
    assert metric(text, "shadowtee_serving_gpu_memory_used_bytes") > 0
