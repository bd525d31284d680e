"""Segment values from request headers and model versions, through the real proxy and the real
comparator's ingest (SQLite and PostgreSQL): what the client sent, per segment, is what
``summary?by=`` counts; a redacted or credential header can never be a dimension."""

from __future__ import annotations

import random
from pathlib import Path

import aiohttp
import pytest

from proxy.settings import ProxySettings
from tests.comparator.store_support import (  # noqa: F401 - fixtures
    db_url_fixture,
    exp_fixture,
)
from tests.e2e.test_pairs_get_through import (
    INFER,
    TOKEN,
    comparator,
    model_server,
    proxy_fields,
    send,
    settle,
)
from tests.proxy.fakes import running_proxy


async def _by(http: aiohttp.ClientSession, base: str, exp: str, dim: str) -> dict[str, int]:
    url = f"{base}/v1/experiments/{exp}/summary?by={dim}&k=20"
    async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 200, await resp.text()
        doc = await resp.json()
    return {v["value"]: v["pairs"] for v in doc["segments"]["values"]}


async def test_header_and_model_version_dimensions_count_what_the_clients_sent(
    db_url: str, exp: str, tmp_path: Path
) -> None:
    rng = random.Random(5)
    headers: list[dict[str, str]] = []
    want: dict[str, int] = {}
    for _ in range(80):
        pick = rng.random()
        h = {"Authorization": "Bearer client-secret"}  # redacted: never a value anywhere
        if pick < 0.15:
            pass  # no tenant header: in no segment of the dimension
        elif pick < 0.2:
            h["X-Tenant"] = "   "  # blank: no value either
        else:
            tenant = rng.choice(["t0", "t1", "t2", "  t3  ", "x" * 300, "café-日"])
            h["X-Tenant"] = tenant
            value = tenant.strip()[:128]
            want[value] = want.get(value, 0) + 1
        headers.append(h)
    fields = {"segment_headers": {"tenant": "X-Tenant"}, "segment_model_versions": True}
    async with (
        model_server("prod") as prod,
        model_server("cand") as cand,
        comparator(db_url) as (base, store),
        aiohttp.ClientSession() as http,
        running_proxy(**proxy_fields(prod, cand, base, exp, tmp_path), **fields) as proxy,
    ):
        await send(http, proxy.url, [INFER] * len(headers), headers)
        await settle(http, proxy.admin, store, exp, len(headers))
        assert await _by(http, base, exp, "tenant") == want
        assert await _by(http, base, exp, "prod_version") == {"1": len(headers)}
        assert await _by(http, base, exp, "cand_version") == {"2": len(headers)}
        for agg in [a for _, a in await store.hourly_aggregates(exp)]:
            assert "client-secret" not in str(agg.to_json())
            assert set(agg.segments) == {"tenant", "prod_version", "cand_version"}


@pytest.mark.parametrize(
    ("headers", "extra", "why"),
    [
        ({"tenant": "Authorization"}, {}, "credential"),
        ({"tenant": "X-Api-Key"}, {}, "credential"),
        ({"tenant": "X-Session-Token"}, {}, "credential"),
        ({"tenant": "Cookie"}, {}, "credential"),
        ({"tenant": "X-Api_Key"}, {}, "credential"),
        ({"tenant": "X-Access-Key"}, {}, "credential"),
        ({"tenant": "X-Session-Id"}, {}, "credential"),
        ({"tenant": "X-Jwt"}, {}, "credential"),
        ({"tenant": "X-Signature"}, {}, "credential"),
        ({"tenant": "X-Passwd"}, {}, "credential"),
        ({"tenant": "X-Internal"}, {"redact_headers": ("X-Internal",)}, "redacted"),
        ({"tenant": "Transfer-Encoding"}, {}, "hop-by-hop"),
        ({"tenant": "Connection"}, {}, "hop-by-hop"),
        ({"tenant": "X bad"}, {}, "segment_headers"),
        ({"Tenant": "X-Tenant"}, {}, "segment_headers"),
        ({"route": "X-Route"}, {"segment_route": True}, "named twice"),
        ({"prod_version": "X-V"}, {"segment_model_versions": True}, "named twice"),
        ({f"d{i}": f"X-D{i}" for i in range(7)}, {"segment_model_versions": True}, "at most 8"),
    ],
)
def test_settings_refuse_a_header_that_must_not_become_a_value(
    headers: dict[str, str], extra: dict[str, object], why: str
) -> None:
    with pytest.raises(ValueError) as err:
        ProxySettings(
            prod="http://127.0.0.1:1",
            candidate="http://127.0.0.1:2",
            segment_headers=headers,
            **extra,  # type: ignore[arg-type]
        )
    assert why in str(err.value)
