"""``GET /v1/experiments/{name}/summary?by=<dimension>`` over real HTTP (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from comparator.app import create_app
from comparator.settings import ComparatorSettings
from tests.comparator.store_support import T0, db_url_fixture, exp_fixture, make_pair, running

__all__ = ["db_url_fixture", "exp_fixture"]

TOKEN = "t0ken-for-segments"


def _pairs(exp: str) -> list[dict[str, Any]]:
    """Two hours; tenant a agrees always, tenant b disagrees on every other pair; 12 small
    tenants; a few pairs without segments."""
    out = []
    for i in range(120):
        disagree = i % 4 == 1  # tenant b: half its pairs
        p = make_pair(
            i,
            exp,
            ts=T0 + timedelta(minutes=i),
            cand_probs=[0.1, 0.8, 0.1] if disagree else None,
        )
        if i % 20 == 19:
            pass  # no segment at all
        elif i % 4 in (0, 2):
            p["segments"] = {"tenant": "a"}
        elif i % 4 == 1:
            p["segments"] = {"tenant": "b"}
        else:
            p["segments"] = {"tenant": f"small{i % 12}"}
        out.append(p)
    return out


async def test_summary_by_dimension_lists_segments_and_hours(db_url: str, exp: str) -> None:
    app = create_app(ComparatorSettings(db=db_url, token=TOKEN), CollectorRegistry())
    async with running(app) as base, aiohttp.ClientSession(base_url=base) as http:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post("/v1/pairs", json={"pairs": _pairs(exp)}, headers=auth) as r:
            assert r.status == 200, await r.text()
        url = f"/v1/experiments/{exp}/summary"
        async with http.get(url, params={"by": "tenant"}) as r:
            assert r.status == 401  # the route needs the token
        async with http.get(url, params={"by": "tenant", "k": "4"}, headers=auth) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        seg = body["segments"]
        values = {v["value"]: v for v in seg["values"]}
        assert seg["dimension"] == "tenant" and len(values) == 4
        assert values["a"]["pairs"] == 60 and values["a"]["top1_disagreement"] == 0.0
        assert values["b"]["pairs"] == 30 and values["b"]["top1_disagreement"] == 1.0
        # every pair with a tenant is in exactly one of the 4 segments
        assert sum(v["pairs"] for v in values.values()) == 114
        assert "(other)" in values
        assert [h["hour"][:13] for h in seg["hours"]] == ["2026-11-22T10", "2026-11-22T11"]
        assert sum(h["values"]["b"]["pairs"] for h in seg["hours"]) == 30
        for bad, field in (
            ({"by": "Tenant!"}, "by"),
            ({"by": "tenant", "k": "1"}, "k"),
            ({"by": "tenant", "k": "²"}, "k"),
        ):
            async with http.get(url, params=bad, headers=auth) as r:
                assert r.status == 400
                assert (await r.json())["error"].startswith(f"{field}:")
        async with http.get(url, params={"by": "region"}, headers=auth) as r:
            assert r.status == 400
            assert "region" in (await r.json())["error"] and "tenant" in (await r.json())["error"]
        async with http.get(url, headers=auth) as r:
            assert "segments" not in await r.json()
