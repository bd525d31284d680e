"""``shadowtee demo`` as a real subprocess: verdicts, report files, and nothing left running.

The bad candidate (v3, trained with corrupted labels) must be rejected on top-1 disagreement; the
good one (v2) must not be rejected. The comparator's disagreement must match the one computed
directly with onnxruntime on the same inputs, and every process the demo started must be gone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.helpers import MODELS, shadowtee

REQUESTS = 600


def _direct_disagreement(candidate_version: str, n: int) -> float:
    """Top-1 disagreement of v1 and the candidate on the demo's inputs, straight from onnxruntime."""
    import onnxruntime as ort

    from shadowtee.traffic import digits_requests

    bodies, _ = digits_requests(MODELS.parent)
    rows = np.array(
        [json.loads(bodies[i % len(bodies)])["inputs"][0]["data"] for i in range(n)], np.float32
    )
    labels = []
    for version in ("1", candidate_version):
        sess = ort.InferenceSession(
            str(MODELS / version / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        labels.append(sess.run(["label"], {"input": rows})[0])
    return float(np.mean(labels[0] != labels[1]))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


def _run_demo(out: Path, candidate: str) -> tuple[int, dict[str, Any], str]:
    cli = shadowtee(
        "demo",
        "--out",
        str(out),
        "--candidate",
        candidate,
        "--requests",
        str(REQUESTS),
        timeout=140,
    )
    summary = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    return cli.returncode, summary, cli.stdout + cli.stderr


def _assert_clean_and_reported(out: Path, summary: dict[str, Any], printed: str) -> None:
    assert "window shortened" in printed and "not a real verdict" in printed
    for name in ("report.html", "report.json", "report.md"):
        assert (out / name).stat().st_size > 0, name
    assert set(summary["processes"]) == {"prod", "candidate", "comparator", "proxy"}
    for name, proc in summary["processes"].items():
        assert _gone(proc["pid"]), f"{name} (pid {proc['pid']}) is still running"
        for port in proc["ports"].values():
            assert _closed(port), f"{name} still listens on {port}"
    assert summary["pairs_stored"] == REQUESTS
    # The demo's segment: the digit's parity, from the request through the proxy to the report.
    parity = summary["segments"]["parity"]
    assert set(parity) == {"even", "odd"}, parity
    assert sum(v["pairs"] for v in parity.values()) == REQUESTS
    assert "segment parity=even" in printed
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [d["dimension"] for d in report["segments"]] == ["parity"]
    assert "<h3>parity</h3>" in (out / "report.html").read_text(encoding="utf-8")


def _agreement_matches_onnxruntime(summary: dict[str, Any], version: str) -> None:
    cls = summary["classification"]
    assert cls["n"] >= REQUESTS * 0.99  # pairs where both sides answered in time
    seen = 1 - cls["agree"] / cls["n"]
    assert abs(seen - _direct_disagreement(version, REQUESTS)) <= 0.005


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_demo_rejects_the_bad_candidate_on_top1_disagreement(tmp_path: Path) -> None:
    code, summary, printed = _run_demo(tmp_path, "bad")
    assert code == 1, printed
    assert summary["decision"] == "REJECT"
    failed = [c["id"] for c in summary["verdict"]["checks"] if str(c["status"]).upper() == "FAIL"]
    assert "top1_disagreement" in failed
    assert "verdict: REJECT" in printed
    _assert_clean_and_reported(tmp_path, summary, printed)
    _agreement_matches_onnxruntime(summary, "3")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_demo_does_not_reject_the_good_candidate(tmp_path: Path) -> None:
    code, summary, printed = _run_demo(tmp_path, "good")
    assert code in (0, 3), printed
    assert summary["decision"] in ("PROMOTE", "KEEP_OBSERVING")
    top1 = next(c for c in summary["verdict"]["checks"] if c["id"] == "top1_disagreement")
    assert str(top1["status"]).upper() != "FAIL"
    _assert_clean_and_reported(tmp_path, summary, printed)
    _agreement_matches_onnxruntime(summary, "2")


def test_demo_refuses_a_bad_request_count_in_one_line(tmp_path: Path) -> None:
    cli = shadowtee("demo", "--out", str(tmp_path), "--requests", "0")
    assert cli.returncode == 2
    assert cli.stderr.strip().count("\n") == 0 and "--requests" in cli.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_stops_every_process_on_ctrl_c(tmp_path: Path) -> None:
    from shadowtee.supervise import shadowtee_argv

    argv = shadowtee_argv("demo", "--out", str(tmp_path), "--requests", "1000000")
    demo = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert demo.stderr is not None
        # The demo writes demo.json with its children's PIDs once they are ready, then sends.
        for line in demo.stderr:
            if "sending" in line:
                break
        else:
            pytest.fail("the demo ended before sending traffic")
        summary = json.loads((tmp_path / "demo.json").read_text(encoding="utf-8"))
        demo.send_signal(signal.SIGINT)
        rest = demo.communicate(timeout=60)[1]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, rest
    assert "interrupted" in rest
    for name, proc in summary["processes"].items():
        assert _gone(proc["pid"]), f"{name} (pid {proc['pid']}) is still running"
        for port in proc["ports"].values():
            assert _closed(port), f"{name} still listens on {port}"
