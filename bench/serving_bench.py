"""Benchmark ``shadowtee serve``: the raw ``session.run`` ceiling, then the server over HTTP.

Run::

    .venv/bin/python bench/serving_bench.py                     # bundled digits v1 model
    .venv/bin/python bench/serving_bench.py --model mlp         # a ~4M-parameter MLP (compute matters)
    .venv/bin/python bench/serving_bench.py --concurrency 1 16 64 --seconds 5

For each mode (dynamic batching off: ``--max-batch 1``; on: ``--max-batch 64 --max-delay-ms 2``)
it starts a real ``shadowtee serve`` process on a free loopback port, drives it with N concurrent
keep-alive clients sending one-row OIP v2 requests for a fixed time, and prints throughput, p50/p99
latency (of the best of ``--repeat`` runs), mean rows per ``session.run`` (from the server's own batch-size histogram) and the ratio to
the raw batched ceiling. Client and server share the machine: on a small box the client's own CPU
use is part of what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
DIGITS_V1 = ROOT / "models" / "digits" / "1" / "model.onnx"


def make_mlp(path: Path, width: int = 2048, features: int = 64) -> Path:
    """A 64-2048-2048-10 ReLU MLP (~4.3M parameters) built with the onnx helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dims = [features, width, width, 10]
    nodes, inits, prev = [], [], "input"
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}"),
        ]
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"h{i}"]))
        prev = f"h{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def raw_ceiling(model: Path, batch: int, seconds: float) -> float:
    """Rows per second of ``session.run`` alone at ``batch`` rows."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 16, (batch, 64)).astype(np.float32)
    for _ in range(5):
        sess.run(None, {"input": x})
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sess.run(None, {"input": x})
        n += 1
    return n * batch / (time.perf_counter() - start)


def start_server(model: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowtee.cli", "serve", "--model", str(model), "--name", "bench",
         "--listen", "127.0.0.1:0", "--device", "cpu", *extra],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for _ in range(200):
        line = proc.stderr.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            return proc, m.group(1)
        if not line:
            break
    proc.kill()
    raise SystemExit("server did not start")


SERIES = ("request_duration_seconds", "queue_wait_seconds", "inference_duration_seconds",
          "batch_size")  # fmt: skip


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as r:
        text = await r.text()
    out = {}
    for name in SERIES:
        for part in ("sum", "count"):
            m = re.search(rf"^shadowtee_serving_{name}_{part} (\S+)$", text, re.M)
            out[f"{name}_{part}"] = float(m.group(1)) if m else 0.0
    return out


async def drive(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict[str, Any]:
    """N closed-loop clients for ``seconds``; client latencies plus the server's own breakdown."""
    latencies: list[float] = []
    errors = 0
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        for _ in range(300):  # ready?
            async with session.get(f"{url}/v2/health/ready") as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.02)
        infer = f"{url}/v2/models/bench/infer"
        headers = {"Content-Type": "application/json"}
        before = await scrape(session, url)
        stop = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                async with session.post(infer, data=bodies[i % len(bodies)], headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - t0)
                i += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
        after = await scrape(session, url)
    d = {k: after[k] - before[k] for k in after}

    def mean_ms(name: str) -> float:
        n = d[f"{name}_count"]
        return 1000 * d[f"{name}_sum"] / n if n else float("nan")

    lat = np.asarray(latencies) * 1000
    batches = d["batch_size_count"]
    return {
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p99": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "client_mean_ms": float(lat.mean()) if lat.size else float("nan"),
        "server_ms": mean_ms("request_duration_seconds"),
        "queue_ms": mean_ms("queue_wait_seconds"),
        "inference_ms_per_batch": mean_ms("inference_duration_seconds"),
        "errors": errors,
        "rows_per_run": d["batch_size_sum"] / batches if batches else float("nan"),
    }


def _body(row: np.ndarray) -> bytes:
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits", help="digits | mlp | PATH.onnx")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument(
        "--server-args",
        default="",
        help="extra flags for shadowtee serve, e.g. '--intra-op-threads 1'",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per cell; the best is kept")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    model = {"digits": DIGITS_V1, "mlp": None}.get(args.model, Path(args.model))
    if model is None:
        model = make_mlp(tmp / "mlp.onnx")
    xs = np.random.default_rng(1).uniform(0, 16, (256, 64)).astype(np.float32)
    bodies = [_body(row) for row in xs]
    results: dict[str, Any] = {"model": str(args.model), "ceiling": {}, "server": []}
    load = os.getloadavg()[0]
    print(f"load average before: {load:.2f} on {os.cpu_count()} CPUs")
    results["load_before"] = load
    print(f"model {args.model}: raw session.run ceiling (rows/s)")
    for b in (1, 8, 64):
        results["ceiling"][b] = raw_ceiling(model, b, min(args.seconds, 3.0))
        print(f"  batch {b:>3}: {results['ceiling'][b]:>10.0f}")
    ceiling = max(results["ceiling"].values())
    modes = {
        "batching off": ["--max-batch", "1"],
        "batching on": ["--max-batch", "64", "--max-delay-ms", str(args.max_delay_ms)],
    }
    print(f"{'mode':<14}{'conc':>5}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'rows/run':>9}"
          f"{'ceiling':>8}{'errors':>7}  | server ms: total queue infer/batch")  # fmt: skip
    for mode, flags in modes.items():
        proc, url = start_server(model, *flags, *args.server_args.split())
        try:
            for c in args.concurrency:
                runs = [
                    asyncio.run(drive(url, bodies, c, args.seconds)) for _ in range(args.repeat)
                ]
                r = max(runs, key=lambda run: run["rps"])
                r.update(mode=mode, concurrency=c, of_ceiling=r["rps"] / ceiling)
                results["server"].append(r)
                print(f"{mode:<14}{c:>5}{r['rps']:>9.0f}{r['p50']:>8.2f}{r['p99']:>8.2f}"
                      f"{r['rows_per_run']:>9.1f}{r['of_ceiling']:>8.1%}{r['errors']:>7}  | "
                      f"{r['server_ms']:>15.2f}{r['queue_ms']:>6.2f}{r['inference_ms_per_batch']:>12.3f}")  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(15)
    results["load_after"] = os.getloadavg()[0]
    print(f"load average after: {results['load_after']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
