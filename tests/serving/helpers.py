"""Shared helpers for the serving tests: model files, settings, and a real loopback server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from aiohttp.test_utils import TestClient, TestServer
from onnx import TensorProto, helper
from prometheus_client import CollectorRegistry

from serving import ServeSettings, create_app
from serving.app import STATE

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits"
DIGITS_V1 = DIGITS / "1" / "model.onnx"


def settings(model: Path | str = DIGITS_V1, **kw: Any) -> ServeSettings:
    base: dict[str, Any] = {
        "model": str(model),
        "name": "digits",
        "version": "1",
        "listen": "127.0.0.1:0",
        "device": "cpu",
        "warmup_runs": 2,
    }
    base.update(kw)
    return ServeSettings(**base)


def write_arith_model(path: Path) -> Path:
    """``doubled = x * 2`` (FP32 [-1, 3]) and ``next = y + 1`` (INT64 [-1]): exact in any batch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, ["batch"])
    doubled = helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["batch", 3])
    nxt = helper.make_tensor_value_info("next", TensorProto.INT64, ["batch"])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.INT64, [], [1])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["doubled"]),
            helper.make_node("Add", ["y", "one"], ["next"]),
        ],
        "arith",
        [x, y],
        [doubled, nxt],
        initializer=[two, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def body(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    """An OIP v2 digits request for rows ``x`` (shape [n, 64])."""
    doc: dict[str, Any] = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    doc.update(extra)
    return doc


def metric(text: str, name: str) -> float:
    """The value of the unlabelled sample ``name`` in a Prometheus exposition."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert m is not None, f"{name} not in /metrics"
    return float(m.group(1))


@asynccontextmanager
async def serving_client(
    s: ServeSettings,
    *,
    before_ready: Callable[[], Awaitable[None]] | None = None,
    wait_ready: bool = True,
) -> AsyncIterator[TestClient[Any, Any]]:
    """A client of a real server on 127.0.0.1 running ``create_app(s)``; ready unless told not."""
    app = create_app(s, CollectorRegistry(), before_ready=before_ready)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        if wait_ready:
            for _ in range(500):  # bounded: warm-up of a tiny model takes milliseconds
                if app[STATE].ready:
                    break
                resp = await client.get("/v2/health/ready")
                await resp.read()
                if resp.status == 200:
                    break
                await asyncio.sleep(0.01)
            assert app[STATE].ready, "server never became ready"
        yield client
    finally:
        await client.close()
