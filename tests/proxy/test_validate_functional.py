"""``validate_inputs`` through the real proxy on 127.0.0.1: a 400 naming the input before
production sees the request, metadata read from production's ``GET /v2/models/{name}`` (and
again when it changes), counted on ``/metrics``; off by default. Segment values through the same
proxy reach the comparator."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from tests.proxy.fakes import FakeComparator, running_proxy, serve_app, wait_for


def _model(meta: dict[str, Any], seen: list[bytes], reads: list[str]) -> web.Application:
    app = web.Application()

    async def metadata(request: web.Request) -> web.Response:
        reads.append(request.path)
        return web.json_response(meta)

    async def infer(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.json_response(
            {"outputs": [{"name": "p", "shape": [1, 2], "datatype": "FP32", "data": [0.3, 0.7]}]}
        )

    app.router.add_get("/v2/models/{name}", metadata)
    app.router.add_post("/v2/models/{name}/infer", infer)
    return app


def _body(datatype: str = "FP32", n: int = 4, tenant: str = "acme") -> bytes:
    return json.dumps(
        {
            "inputs": [{"name": "x", "shape": [1, n], "datatype": datatype, "data": [1.0] * n}],
            "parameters": {"tenant": tenant},
        }
    ).encode()


async def test_invalid_inputs_get_a_400_naming_the_input_before_production() -> None:
    meta: dict[str, Any] = {
        "name": "m",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    }
    seen: list[bytes] = []
    reads: list[str] = []
    comparator = FakeComparator()
    async with (
        serve_app(_model(meta, seen, reads)) as prod,
        serve_app(_model(meta, [], [])) as cand,
        serve_app(comparator.app()) as comp,
        running_proxy(
            prod=prod, candidate=cand, comparator=comp, validate_inputs=True,
            validate_refresh_s=0.3, segment_pointers={"tenant": "/parameters/tenant"},
        ) as proxy,
        aiohttp.ClientSession() as http,
    ):  # fmt: skip
        url = proxy.url + "/v2/models/m/infer"
        async with http.post(url, data=_body()) as r:
            assert r.status == 200
        async with http.post(url, data=_body(n=5)) as r:
            assert r.status == 400
            text = await r.text()
        assert "input 'x'" in text and "shape [1, 5]" in text
        async with http.post(url, data=_body("INT64")) as r:
            assert r.status == 400 and "datatype" in await r.text()
        assert len(seen) == 1  # production saw only the valid request
        assert reads == ["/v2/models/m"]
        async with http.get(proxy.admin + "/metrics") as r:
            metrics = await r.text()
        assert "shadowtee_proxy_inputs_rejected_total 2.0" in metrics
        assert "shadowtee_proxy_inputs_checked_total 3.0" in metrics
        # The model changes: its next metadata read takes the new inputs.
        meta["inputs"] = [{"name": "x", "datatype": "FP32", "shape": [-1, 5]}]
        await asyncio.sleep(0.35)
        async with http.post(url, data=_body(n=5, tenant="zeta")) as r:
            assert r.status == 200
        assert len(reads) == 2 and len(seen) == 2
        # the two valid requests were paired, with their tenant
        await wait_for(lambda: len(comparator.pairs) == 2, "two pairs")
        assert sorted((p.segments or {}).get("tenant", "") for p in comparator.pairs) == [
            "acme",
            "zeta",
        ]


async def test_validation_is_off_by_default() -> None:
    meta = {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}
    seen: list[bytes] = []
    reads: list[str] = []
    comparator = FakeComparator()
    async with (
        serve_app(_model(meta, seen, reads)) as prod,
        serve_app(_model(meta, [], [])) as cand,
        serve_app(comparator.app()) as comp,
        running_proxy(prod=prod, candidate=cand, comparator=comp) as proxy,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(proxy.url + "/v2/models/m/infer", data=_body("INT64", 7)) as r:
            assert r.status == 200
        async with http.get(proxy.admin + "/metrics") as r:
            assert "inputs_rejected" not in await r.text()
        assert len(seen) == 1 and reads == []
        await wait_for(lambda: len(comparator.pairs) == 1, "a pair")
        assert comparator.pairs[0].segments is None
