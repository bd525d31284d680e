"""Does the GPU image's onnxruntime find CUDA? A check that runs on a machine without a GPU.

It builds what the GPU image's Dockerfile builds -- a venv with requirements-runtime.lock and
requirements-gpu.lock, hash-checked, no dependencies resolved -- in a scratch directory, then:

1. ``ldd`` of onnxruntime's CUDA provider library with the image's ``LD_LIBRARY_PATH`` (read from
   the Dockerfile, ``/opt/shadowtee`` replaced by the scratch venv): every library it needs
   resolves, each CUDA/cuDNN one from the venv's ``nvidia`` wheels; only the driver's
   ``libcuda.so.1`` may be missing (the node brings it);
2. with no ``LD_LIBRARY_PATH`` at all, a Python process in that venv calls
   ``onnxruntime.preload_dlls()`` (what ``shadowtee serve`` does before a CUDA session) and then
   ``dlopen``s the provider library: every CUDA library it links and cuDNN are mapped from the
   venv's wheels, and the only library the load can miss is the driver's ``libcuda.so.1``.

A CUDA session itself needs a GPU and its driver, which this cannot show. Exit 0 when both hold.

    .venv/bin/python bench/cuda_libs_check.py [--venv DIR] [--keep]   # ~2 GB of wheels
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVER = "libcuda.so.1"  # from the node, through the NVIDIA container toolkit
# Loaded by the CUDA provider at run time (dlopen by name), not linked: cuDNN's front library.
RUNTIME_LOADED = ("libcudnn.so.9",)
IMAGE_PREFIX = "/opt/shadowtee"

PROBE = r"""
import ctypes, json, os, sys
import onnxruntime as ort
ort.preload_dlls()
lib = os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_cuda.so")
ctypes.CDLL(os.path.join(os.path.dirname(lib), "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
error = None
try:
    ctypes.CDLL(lib)
except OSError as exc:
    error = str(exc)
try:
    import pynvml  # nvidia-ml-py: loads the driver's libnvidia-ml.so.1 only at nvmlInit()
    nvml = pynvml.__name__
except ImportError:
    nvml = None
maps = sorted({line.split()[-1] for line in open("/proc/self/maps") if ".so" in line})
print(json.dumps({"error": error, "maps": maps, "provider": lib, "nvml": nvml}))
"""


def image_ld_library_path(venv: Path) -> str:
    """The Dockerfile's ``LD_LIBRARY_PATH``, its ``/opt/shadowtee`` replaced by ``venv``."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = re.search(r"LD_LIBRARY_PATH=(\S+)", text)
    if found is None:
        raise SystemExit("the Dockerfile sets no LD_LIBRARY_PATH")
    return found[1].replace(IMAGE_PREFIX, str(venv))


def build_venv(venv: Path) -> None:
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    for lock in ("requirements-runtime.lock", "requirements-gpu.lock"):
        subprocess.run([*pip, "--require-hashes", "--no-deps", "-r", str(ROOT / lock)], check=True)


def ldd(lib: Path, ld_path: str) -> dict[str, str | None]:
    env = {**os.environ, "LD_LIBRARY_PATH": ld_path}
    out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, env=env, check=True)
    deps: dict[str, str | None] = {}
    for line in out.stdout.splitlines():
        m = re.match(r"\s*(\S+) => (not found|(\S+))", line)
        if m:
            deps[m[1]] = None if m[2] == "not found" else m[3]
    return deps


def check(venv: Path) -> list[str]:
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    provider = site / "onnxruntime" / "capi" / "libonnxruntime_providers_cuda.so"
    problems: list[str] = []
    if not provider.is_file():
        return [f"{provider} is missing: is onnxruntime-gpu in requirements-runtime.lock?"]
    nvidia = str(site / "nvidia")

    # 0. the control: without LD_LIBRARY_PATH the loader finds none of them (no RPATH)
    bare = ldd(provider, "")
    unresolved = sorted(n for n, where in bare.items() if where is None and n != DRIVER)
    print(f"ldd {provider.name} with no LD_LIBRARY_PATH: not found {unresolved}")
    if not unresolved:
        problems.append("control: the libraries resolve without help, so this check shows nothing")

    # 1. the image's LD_LIBRARY_PATH
    ld_path = image_ld_library_path(venv)
    deps = ldd(provider, ld_path)
    print(f"ldd {provider.name} with LD_LIBRARY_PATH={ld_path}")
    for name, where in sorted(deps.items()):
        print(f"  {name:<28} {where or 'not found'}")
        if where is None and name != DRIVER:
            problems.append(f"ldd: {name} not found")
    cuda_deps = {n for n in deps if re.match(r"lib(cu|nv)", n) and n != DRIVER}
    for name in sorted(cuda_deps):
        where = deps[name]
        if where is not None and not where.startswith(nvidia):
            problems.append(f"ldd: {name} resolves to {where}, not the venv's nvidia wheels")
    if not cuda_deps:
        problems.append("ldd: the provider library needs no CUDA library? (unexpected)")
    for name in RUNTIME_LOADED:
        hits = [d for d in ld_path.split(":") if (Path(d) / name).exists()]
        print(f"  {name:<28} {hits[0] + '/' + name if hits else 'not found'} (dlopen at run time)")
        if not hits:
            problems.append(f"LD_LIBRARY_PATH: no directory holds {name}")

    # 2. preload_dlls() and no LD_LIBRARY_PATH
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    done = subprocess.run(
        [str(py), "-c", PROBE], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        return [*problems, f"preload probe failed: {done.stderr.strip()[-2000:]}"]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"preload_dlls() then dlopen({Path(result['provider']).name}): {result['error'] or 'ok'}")
    if result["error"] is not None and not result["error"].startswith(f"{DRIVER}:"):
        problems.append(f"dlopen after preload_dlls(): {result['error']}")
    if result.get("nvml") is None:
        problems.append("pynvml (nvidia-ml-py) does not import: serving falls back to nvidia-smi")
    loaded = {Path(p).name: p for p in result["maps"]}
    for name in [*sorted(cuda_deps), *RUNTIME_LOADED]:
        where = loaded.get(name)
        print(f"  {name:<28} {where or 'not loaded'}")
        if where is None or not where.startswith(nvidia):
            problems.append(f"preload_dlls(): {name} not mapped from the venv's wheels ({where})")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, help="scratch venv to (re)use (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary venv")
    args = parser.parse_args()
    tmp = None
    venv = args.venv
    if venv is None:
        tmp = Path(tempfile.mkdtemp(prefix="shadowtee-cuda-"))
        venv = tmp / "venv"
    try:
        build_venv(venv.resolve())
        problems = check(venv.resolve())
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    for p in problems:
        print(f"FAIL {p}")
    verdict = "every one resolves from the pinned wheels" if not problems else "MISSING"
    print(f"CUDA libraries (all but the driver's {DRIVER}): {verdict}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
