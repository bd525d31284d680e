"""Prometheus metrics of the model server, on an injected ``CollectorRegistry``.

Counters and histograms are bound at start-up (``labels()`` locks and allocates, so the request path
only calls ``observe``/``inc`` on children it already holds). Gauges that describe state -- queue
depth, the model in service, output health, GPU memory -- are computed at scrape time by
:class:`_StateCollector`. ``process_resident_memory_bytes`` comes from prometheus_client's
process collector, registered on the same registry, so the comparator's memory sampler reads RSS
from the same endpoint, and ``shadowtee_serving_memory_limit_bytes`` -- the container's memory limit
read from the cgroup (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) at scrape time -- is the limit
the verdict's memory_headroom and memory_leak judge against. No limit (``max``, or v1's "unlimited"
near 2^63) exports no sample, and those checks are NA.

Output health: for every floating-point output the server keeps running count, sum, sum of squares
and NaN/Inf counts of the values it returned, and exposes mean and standard deviation -- the
signals that show a model going wrong while it still answers 200.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CGROUP_MEMORY_LIMITS", "OutputHealth", "ServingMetrics", "memory_limit"]

log = logging.getLogger(__name__)

P = "shadowtee_serving_"
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 5.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STATUSES = (200, 400, 404, 413, 500, 503)
#: Where the container's memory limit is read: cgroup v2, then v1.
CGROUP_MEMORY_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)
# cgroup v1 writes "no limit" as the largest page-aligned int64 (about 2^63); anything this large
# is no limit.
_UNLIMITED = 1 << 62


def memory_limit(paths: Sequence[Path] = CGROUP_MEMORY_LIMITS) -> float | None:
    """The memory limit in bytes from the first readable cgroup file; None when there is none."""
    for path in paths:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            log.warning("unreadable memory limit %r in %s", text, os.fspath(path))
            return None
        return float(value) if 0 < value < _UNLIMITED else None
    return None


@dataclass
class _Moments:
    count: int = 0
    total: float = 0.0
    squares: float = 0.0
    nan: int = 0
    inf: int = 0


@dataclass
class OutputHealth:
    """Running moments of the values each floating-point output returned (thread-safe)."""

    _by_output: dict[str, _Moments] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, name: str, values: np.ndarray) -> None:
        if values.dtype.kind != "f" or values.size == 0:
            return
        flat = values.astype(np.float64, copy=False).ravel()
        s, sq = float(flat.sum()), float(np.dot(flat, flat))
        nan = inf = 0
        finite = flat
        if not (math.isfinite(s) and math.isfinite(sq)):  # rare: count and leave out NaN/Inf
            nan = int(np.isnan(flat).sum())
            inf = int(np.isinf(flat).sum())
            finite = flat[np.isfinite(flat)]
            s, sq = float(finite.sum()), float(np.dot(finite, finite))
        with self._lock:
            m = self._by_output.setdefault(name, _Moments())
            m.count += int(finite.size)
            m.total += s
            m.squares += sq
            m.nan += nan
            m.inf += inf

    def snapshot(self) -> dict[str, _Moments]:
        with self._lock:
            return {k: _Moments(**vars(v)) for k, v in self._by_output.items()}


def _gpu_memory() -> tuple[float, float] | None:
    """(used, total) bytes of GPU 0 through NVML when available, else ``nvidia-smi``."""
    try:
        import pynvml

        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        return float(info.used), float(info.total)
    except Exception:  # NVML is optional (pynvml missing or no driver): try nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout  # fmt: skip
        used, total = (float(x) * 1024 * 1024 for x in out.strip().split(","))
        return used, total
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class _StateCollector(Collector):
    def __init__(
        self,
        state: Callable[[], dict[str, Any]],
        health: OutputHealth,
        limit_paths: Sequence[Path] = CGROUP_MEMORY_LIMITS,
    ) -> None:
        self._state = state
        self._health = health
        self._limit_paths = tuple(limit_paths)

    def collect(self) -> Iterator[Any]:
        st = self._state()
        limit = memory_limit(self._limit_paths)
        if limit is not None:
            lim = GaugeMetricFamily(
                P + "memory_limit_bytes", "Memory limit of the container (cgroup), bytes."
            )
            lim.add_metric([], limit)
            yield lim
        depth = GaugeMetricFamily(P + "queue_depth", "Requests waiting to join a batch.")
        depth.add_metric([], st.get("queue_depth", 0))
        yield depth
        ready = GaugeMetricFamily(P + "ready", "1 once the model is loaded and warmed up.")
        ready.add_metric([], 1.0 if st.get("ready") else 0.0)
        yield ready
        info = GaugeMetricFamily(
            P + "model_info",
            "The model in service and the execution provider it runs on.",
            labels=["name", "version", "sha256", "provider", "device", "reason"],
        )
        if st.get("model") is not None:
            m = st["model"]
            info.add_metric(
                [m.name, m.version, m.sha256, m.provider, m.device, m.provider_reason], 1.0
            )
            if m.device == "cuda":
                mem = _gpu_memory()
                if mem is not None:
                    used = GaugeMetricFamily(P + "gpu_memory_used_bytes", "GPU memory in use.")
                    used.add_metric([], mem[0])
                    total = GaugeMetricFamily(P + "gpu_memory_total_bytes", "GPU memory size.")
                    total.add_metric([], mem[1])
                    yield used
                    yield total
        yield info
        snap = self._health.snapshot()
        mean = GaugeMetricFamily(P + "output_mean", "Mean of returned values.", labels=["output"])
        std = GaugeMetricFamily(
            P + "output_std", "Standard deviation of returned values.", labels=["output"]
        )
        nan = CounterMetricFamily(P + "output_nan", "NaN values returned.", labels=["output"])
        inf = CounterMetricFamily(P + "output_inf", "Inf values returned.", labels=["output"])
        for name, mo in sorted(snap.items()):
            if mo.count:
                mu = mo.total / mo.count
                mean.add_metric([name], mu)
                std.add_metric([name], math.sqrt(max(mo.squares / mo.count - mu * mu, 0.0)))
            nan.add_metric([name], mo.nan)
            inf.add_metric([name], mo.inf)
        yield from (mean, std, nan, inf)


class ServingMetrics:
    """Every series of ``shadowtee serve``; children are bound here, once."""

    def __init__(
        self,
        registry: CollectorRegistry,
        state: Callable[[], dict[str, Any]] | None = None,
        *,
        memory_limit_paths: Sequence[Path] = CGROUP_MEMORY_LIMITS,
    ) -> None:
        self.registry = registry
        requests = Counter(
            P + "requests", "Infer requests by HTTP status.", ["status"], registry=registry
        )
        self.requests = {code: requests.labels(status=str(code)) for code in STATUSES}
        self.request_seconds = Histogram(
            P + "request_duration_seconds", "Infer request latency, parse to response.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            P + "queue_wait_seconds", "Time a request waited before its batch started.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            P + "inference_duration_seconds", "session.run time per batch.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            P + "batch_size", "Rows per session.run.", buckets=BATCH_BUCKETS, registry=registry
        )
        self.batch_requests = Histogram(
            P + "batch_requests", "Requests per session.run.",
            buckets=BATCH_BUCKETS, registry=registry,
        )  # fmt: skip
        self.inference_cpu = Counter(
            P + "inference_thread_cpu_seconds",
            "CPU time of the inference thread: stacking, session.run (all of it with one "
            "intra-op thread), output health.",
            registry=registry,
        )
        self.shed = Counter(P + "shed", "Requests refused with 503: queue full.", registry=registry)
        self.warmup_runs = Counter(
            P + "warmup_runs", "Warm-up inferences run before ready.", registry=registry
        )
        self.health = OutputHealth()
        self._state = state or dict
        registry.register(_StateCollector(lambda: self._state(), self.health, memory_limit_paths))
        # Process RSS/CPU/fds: process_resident_memory_bytes and friends.
        ProcessCollector(registry=registry)

    def bind_state(self, state: Callable[[], dict[str, Any]]) -> None:
        self._state = state

    def count(self, status: int) -> None:
        child = self.requests.get(status)
        if child is not None:
            child.inc()
