"""``shadowtee serve`` as a real process: start, answer over a socket, stop on SIGTERM, fail cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.model import cuda_device_present
from tests.serving.helpers import DIGITS, DIGITS_V1

SHADOWTEE = [sys.executable, "-m", "shadowtee.cli"]
GOLDEN = json.loads((DIGITS / "golden.jsonl").read_text().splitlines()[0])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWTEE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``shadowtee serve`` on a free port; return the process and its base URL."""
    proc = subprocess.Popen(
        [*SHADOWTEE, "serve", "--listen", "127.0.0.1:0", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    proc.wait(10)
    raise AssertionError("server did not start:\n" + "".join(lines))


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc, url = _start("--model", str(DIGITS_V1), "--name", "digits", "--version", "1")
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def _wait_ready(url: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise AssertionError("never ready")


def test_serve_answers_infer_and_stops_on_sigterm(
    server: tuple[subprocess.Popen[str], str],
) -> None:
    proc, url = server
    _wait_ready(url)
    resp = httpx.post(f"{url}/v2/models/digits/infer", json=GOLDEN, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["X-Model-Name"] == "digits"
    assert resp.json()["id"] == GOLDEN["id"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def _fail(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    done = subprocess.run(
        [*SHADOWTEE, "serve", *args], capture_output=True, text=True, timeout=60, env=env or _env()
    )
    errors = [ln for ln in done.stderr.splitlines() if "shadowtee" in ln and ":" in ln]
    return done.returncode, errors


@pytest.mark.skipif(cuda_device_present(), reason="this machine has a CUDA device")
def test_device_cuda_without_a_gpu_fails_at_start_in_one_line() -> None:
    code, errors = _fail("--model", str(DIGITS_V1), "--name", "d", "--device", "cuda",
                         "--listen", "127.0.0.1:0")  # fmt: skip
    assert code == 2
    assert errors == [
        "shadowtee serve: --device cuda: no CUDA device on this machine; use --device auto or cpu"
    ]


def test_missing_model_file_fails_in_one_line_naming_the_option(tmp_path: Path) -> None:
    code, errors = _fail("--model", str(tmp_path / "none.onnx"), "--name", "d")
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith("shadowtee serve: invalid --model")


def test_bad_env_value_fails_naming_the_variable() -> None:
    env = {**_env(), "SHADOWTEE_SERVE__MAX_BATCH": "zero"}
    code, errors = _fail("--model", str(DIGITS_V1), "--name", "d", env=env)
    assert code == 2
    assert len(errors) == 1 and "SHADOWTEE_SERVE__MAX_BATCH" in errors[0]


def test_unknown_flag_exits_2_naming_it() -> None:
    done = subprocess.run([*SHADOWTEE, "serve", "--max-batchez", "3"], capture_output=True,
                          text=True, timeout=60, env=_env())  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "shadowtee: error: unrecognized arguments: --max-batchez 3"
    )
