"""Property tests of the infer endpoint: arbitrary bodies never get a 5xx, valid ones get their rows."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from serving import create_app
from serving.app import STATE
from tests.serving.helpers import settings as serve_settings
from tests.serving.helpers import write_arith_model


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server on 127.0.0.1, in a thread with its own event loop (httpx's serve_in_thread)."""
    model = write_arith_model(tmp_path_factory.mktemp("fuzz") / "arith.onnx")
    app = create_app(serve_settings(model, name="arith", max_delay_ms=1), CollectorRegistry())
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()
    url: list[str] = []

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        url.append(f"http://127.0.0.1:{port}")
        for _ in range(500):
            if app[STATE].ready:
                break
            await asyncio.sleep(0.01)
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    assert started.wait(30) and app[STATE].ready
    try:
        yield url[0]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
tensorish = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "y", "z", ""]) | st.integers(),
        "datatype": st.sampled_from(["FP32", "INT64", "FP64", "BOOL", "BYTES", "nope"])
        | json_values,
        "shape": st.lists(st.integers(-2, 4), max_size=3) | json_values,
        "data": st.lists(st.integers(-5, 5) | st.floats(allow_nan=False, width=32), max_size=12)
        | json_values,
    }
)
bodies = st.one_of(
    st.fixed_dictionaries(
        {"inputs": st.lists(tensorish, max_size=3)},
        optional={"outputs": json_values | st.just([{"name": "next"}]), "id": json_values},
    ),
    json_values,
)


@settings(
    max_examples=80,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(doc=bodies)
def test_infer_never_answers_5xx(base_url: str, doc: Any) -> None:
    resp = httpx.post(f"{base_url}/v2/models/arith/infer", content=json.dumps(doc), timeout=10)
    assert resp.status_code in (200, 400), resp.text
    assert "error" in resp.json() or resp.status_code == 200


@settings(
    max_examples=40,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(
        st.lists(st.floats(-1e6, 1e6, width=32), min_size=3, max_size=3), min_size=1, max_size=8
    )
)
def test_valid_requests_get_exactly_their_rows(base_url: str, rows: list[list[float]]) -> None:
    x = np.asarray(rows, np.float32)
    y = np.arange(len(rows), dtype=np.int64)
    doc = {"inputs": [
        {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()},
        {"name": "y", "shape": [len(y)], "datatype": "INT64", "data": y.tolist()},
    ]}  # fmt: skip
    out = {o["name"]: o for o in httpx.post(f"{base_url}/v2/models/arith/infer", json=doc,
                                            timeout=10).json()["outputs"]}  # fmt: skip
    np.testing.assert_array_equal(np.asarray(out["doubled"]["data"], np.float32), (x * 2).ravel())
    assert out["next"]["data"] == (y + 1).tolist()
