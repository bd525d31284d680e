"""Helpers shared by the end-to-end tests: paths and running the real ``shadowtee`` CLI."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from shadowtee.supervise import shadowtee_argv

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models" / "digits"
GOLDEN = MODELS / "golden.jsonl"
INFER = "/v2/models/digits/infer"


@dataclass(frozen=True)
class Cli:
    returncode: int
    stdout: str
    stderr: str


def shadowtee(*args: str, timeout: float = 60.0, cwd: Path | None = None) -> Cli:
    """Run ``shadowtee ARGS`` as a subprocess and collect what it printed."""
    done = subprocess.run(
        shadowtee_argv(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
        check=False,
    )
    return Cli(done.returncode, done.stdout, done.stderr)
