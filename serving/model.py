"""Load an ONNX model: its signature, its identity (sha256) and the execution provider it runs on.

Provider choice (``device``):

- ``cpu``: the CPU provider.
- ``cuda``: the CUDA provider, or :class:`ModelLoadError` when onnxruntime has no CUDA provider or
  the machine has no NVIDIA device -- asking for a GPU and silently getting a CPU would make every
  latency number a lie.
- ``auto``: CUDA when onnxruntime offers it *and* a device is present, else the CPU, logged once as
  ``serving on CPU: no CUDA device``. ``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` even on a
  machine without a GPU and then prints a screenful of errors when a session asks for it, so the
  device is checked first and onnxruntime's own logger is kept at ERROR.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.exceptions import ModelLoadError

__all__ = [
    "DATATYPES",
    "LoadedModel",
    "Signature",
    "TensorSpec",
    "cuda_device_present",
    "default_intra_op_threads",
    "describe_options",
    "load_model",
    "select_provider",
    "session_options",
]

log = logging.getLogger(__name__)

# onnxruntime's C++ logger writes warnings straight to stderr; keep only errors.
ort.set_default_logger_severity(3)

# ONNX Runtime type string -> (OIP v2 datatype, numpy dtype).
DATATYPES: dict[str, tuple[str, np.dtype[Any]]] = {
    "tensor(float)": ("FP32", np.dtype(np.float32)),
    "tensor(double)": ("FP64", np.dtype(np.float64)),
    "tensor(float16)": ("FP16", np.dtype(np.float16)),
    "tensor(int64)": ("INT64", np.dtype(np.int64)),
    "tensor(int32)": ("INT32", np.dtype(np.int32)),
    "tensor(int16)": ("INT16", np.dtype(np.int16)),
    "tensor(int8)": ("INT8", np.dtype(np.int8)),
    "tensor(uint64)": ("UINT64", np.dtype(np.uint64)),
    "tensor(uint32)": ("UINT32", np.dtype(np.uint32)),
    "tensor(uint16)": ("UINT16", np.dtype(np.uint16)),
    "tensor(uint8)": ("UINT8", np.dtype(np.uint8)),
    "tensor(bool)": ("BOOL", np.dtype(np.bool_)),
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: OIP name, datatype and shape (``-1`` for a dynamic dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def batched(self) -> bool:
        """True when the first dimension is dynamic, so rows of several requests can be stacked."""
        return bool(self.shape) and self.shape[0] == -1

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batched(self) -> bool:
        return all(spec.batched for spec in self.inputs)


def _spec(arg: Any) -> TensorSpec:
    if arg.type not in DATATYPES:
        raise ModelLoadError(f"{arg.name}: unsupported tensor type {arg.type}")
    datatype, dtype = DATATYPES[arg.type]
    # Symbolic ("batch") and unknown (None) dimensions are both dynamic.
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape, dtype)


def cuda_device_present() -> bool:
    """True when this machine has an NVIDIA device the CUDA provider could use."""
    if os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl"):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and b"GPU" in done.stdout


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of the ``nvidia-*`` wheels (requirements-gpu.lock), once.

    onnxruntime's CUDA provider library has no RPATH to those wheels, so without this the dynamic
    loader looks only on ``LD_LIBRARY_PATH`` and the system paths. ``preload_dlls()`` (onnxruntime
    1.21 and later) loads them from site-packages by path; with an older onnxruntime, the image's
    ``LD_LIBRARY_PATH`` must name them.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # a missing library is reported again, in one line, at session start
        log.warning("onnxruntime.preload_dlls() failed: %s", exc)


def select_provider(device: str, gpu_mem_limit_bytes: int) -> tuple[list[Any], str]:
    """Return (providers for ``InferenceSession``, reason) for ``device`` auto|cpu|cuda."""
    cpu: list[Any] = ["CPUExecutionProvider"]
    if device == "cpu":
        return cpu, "requested"
    has_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    has_device = has_ep and cuda_device_present()
    if has_ep and has_device:
        preload_cuda_libraries()
        opts: dict[str, Any] = {"device_id": 0}
        if gpu_mem_limit_bytes:
            opts["gpu_mem_limit"] = gpu_mem_limit_bytes
        return [("CUDAExecutionProvider", opts), "CPUExecutionProvider"], "cuda device present"
    why = "onnxruntime has no CUDA provider" if not has_ep else "no CUDA device"
    if device == "cuda":
        raise ModelLoadError(f"--device cuda: {why} on this machine; use --device auto or cpu")
    return cpu, why


class LoadedModel:
    """An ``InferenceSession`` with its name, version, file digest, signature and provider.

    :meth:`run` blocks; the batcher calls it from its single inference thread, never from the
    event loop.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        name: str,
        version: str,
        path: Path,
        sha256: str,
        provider_reason: str,
    ) -> None:
        self.session = session
        self.name = name
        self.version = version
        self.path = path
        self.sha256 = sha256
        self.provider = session.get_providers()[0]
        self.provider_reason = provider_reason
        self.signature = Signature(
            inputs=tuple(_spec(a) for a in session.get_inputs()),
            outputs=tuple(_spec(a) for a in session.get_outputs()),
        )
        self.output_names = [o.name for o in self.signature.outputs]
        self.output_specs = {o.name: o for o in self.signature.outputs}

    @property
    def device(self) -> str:
        return "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run every output for ``feeds``; the order is ``self.output_names``."""
        return [np.asarray(a) for a in self.session.run(self.output_names, feeds)]

    def warmup_feeds(self) -> dict[str, np.ndarray]:
        """One row of zeros per input (dynamic dimensions set to 1)."""
        return {
            spec.name: np.zeros([d if d >= 0 else 1 for d in spec.shape], dtype=spec.dtype)
            for spec in self.signature.inputs
        }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        return list(range(os.cpu_count() or 1))


def _physical_cores(cpus: list[int]) -> int:
    """Distinct cores among ``cpus`` (hyper-threads of one core count once), from sysfs."""
    cores = set()
    for cpu in cpus:
        try:
            siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
            cores.add(siblings.read_text().strip())
        except OSError:
            return len(cpus)
    return len(cores)


def default_intra_op_threads() -> int:
    """Inference threads when none are configured: one per physical core, leaving one CPU free.

    The event loop parses and answers requests while a batch runs; an intra-op pool as wide as
    the machine makes each ``session.run`` wait for its slowest thread whenever the loop holds a
    CPU, so one is left to it (on a one-CPU machine the session still gets one thread). Like
    onnxruntime's own default, hyper-threads of one core count once.
    """
    cpus = _usable_cpus()
    return max(1, min(len(cpus) - 1, _physical_cores(cpus)))


def session_options(intra_op_threads: int = 0, spin: bool = False) -> ort.SessionOptions:
    """The ``SessionOptions`` the server runs with (the benchmark measures its ceiling with them).

    ``intra_op_threads=0`` means :func:`default_intra_op_threads`; execution mode (sequential),
    inter-op threads and graph optimisation (all) are onnxruntime's defaults.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not spin:
        # onnxruntime's worker threads busy-wait after each run by default; on a small machine
        # that burns the cores the event loop needs to parse the next requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = intra_op_threads or default_intra_op_threads()
    return options


def describe_options(options: ort.SessionOptions) -> dict[str, Any]:
    """The session options that decide CPU throughput, for logs and benchmark reports."""
    return {
        "intra_op_num_threads": options.intra_op_num_threads,
        "inter_op_num_threads": options.inter_op_num_threads,
        "execution_mode": str(options.execution_mode).rsplit(".", 1)[-1],
        "graph_optimization_level": str(options.graph_optimization_level).rsplit(".", 1)[-1],
        "intra_op_spinning": _config(options, "session.intra_op.allow_spinning") != "0",
    }


def _config(options: ort.SessionOptions, key: str) -> str | None:
    try:
        return str(options.get_session_config_entry(key))
    except RuntimeError:  # never set: onnxruntime's default
        return None


def load_model(
    path: Path,
    *,
    name: str,
    version: str,
    device: str = "auto",
    gpu_mem_limit_bytes: int = 0,
    intra_op_threads: int = 0,
    spin: bool = False,
) -> LoadedModel:
    """Load ``path`` on the provider ``device`` selects; :class:`ModelLoadError` in one line."""
    providers, reason = select_provider(device, gpu_mem_limit_bytes)
    options = session_options(intra_op_threads, spin)
    try:
        sha = file_sha256(path)
        session = ort.InferenceSession(str(path), options, providers=providers)
    except OSError as exc:
        raise ModelLoadError(f"--model: cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"--model: {path} is not a loadable ONNX model: {first}") from None
    model = LoadedModel(
        session, name=name, version=version, path=path, sha256=sha, provider_reason=reason
    )
    if device == "cuda" and model.device != "cuda":
        raise ModelLoadError("--device cuda: onnxruntime could not create a CUDA session")
    if model.device == "cpu" and reason != "requested":
        log.warning("serving on CPU: %s", reason)
    log.info(
        "loaded %s version %s (sha256 %s) on %s with %s",
        name,
        version,
        sha[:12],
        model.provider,
        describe_options(options),
    )
    return model
