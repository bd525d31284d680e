"""The GPU image loads CUDA: the server preloads the wheels' libraries, the image names their
directories, and (opt-in, ~2 GB of wheels) every library the CUDA provider needs resolves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort
import pytest

from serving import model as serving_model

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture
def cuda_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A machine with a CUDA device and provider, as far as provider selection can tell."""
    calls: list[str] = []
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(serving_model, "cuda_device_present", lambda: True)
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: calls.append("preload"), raising=False)
    serving_model.preload_cuda_libraries.cache_clear()
    yield calls
    serving_model.preload_cuda_libraries.cache_clear()


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_a_cuda_session_preloads_the_cuda_wheels_once(cuda_machine: list[str], device: str) -> None:
    providers, _ = serving_model.select_provider(device, 0)
    assert providers[0] == ("CUDAExecutionProvider", {"device_id": 0})
    serving_model.select_provider(device, 0)
    assert cuda_machine == ["preload"]


def test_a_cpu_session_preloads_nothing(cuda_machine: list[str]) -> None:
    assert serving_model.select_provider("cpu", 0)[0] == ["CPUExecutionProvider"]
    assert cuda_machine == []


def test_the_image_names_the_cuda_wheels_of_onnxruntimes_cuda_major() -> None:
    from onnxruntime.capi import build_and_package_info as info

    major = str(getattr(info, "cuda_version", "13")).split(".")[0]
    text = DOCKERFILE.read_text()
    assert f"CUDA {major}" in text and "CUDA 12" not in text.replace(f"CUDA {major}", "")
    ld = re.search(r"LD_LIBRARY_PATH=(\S+)", text.replace("\\\n", " "))
    assert ld is not None
    site = "/opt/shadowtee/lib/python3.11/site-packages"
    assert ld[1].split(":") == [f"{site}/nvidia/cu{major}/lib", f"{site}/nvidia/cudnn/lib"]
    assert "python:3.11" in text  # the site-packages path above is the image's Python's
    gpu_lock = (ROOT / "requirements-gpu.lock").read_text()
    for wheel in (
        "nvidia-cublas",
        "nvidia-cuda-runtime",
        "nvidia-curand",
        f"nvidia-cudnn-cu{major}",
    ):
        assert re.search(rf"^{wheel}==", gpu_lock, re.M), wheel


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(
    not os.environ.get("SHADOWTEE_CUDA_CHECK"),
    reason="downloads ~2 GB of CUDA wheels: set SHADOWTEE_CUDA_CHECK=1 (or run bench/cuda_libs_check.py)",
)
def test_every_library_the_cuda_provider_needs_resolves_from_the_pinned_wheels() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cuda_libs_check.py")],
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
