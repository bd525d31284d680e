"""Helpers for the store, ingest, app and sampler tests: database fixtures and pair builders.

``db_url`` runs a test on SQLite (a file under tmp_path) and on the real PostgreSQL server
(``pg_url``; skipped with its reason when there is none). The PostgreSQL database is shared by the
session, so each test works under its own experiment name (``exp``).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from comparator.store.store import Store
from tests.support.net import serve_app

__all__ = [
    "T0",
    "db_url_fixture",
    "exp_fixture",
    "make_pair",
    "running",
    "store_fixture",
]

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.fixture(name="db_url", params=["sqlite", "postgresql"])
def db_url_fixture(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(name="store")
async def store_fixture(db_url: str) -> AsyncIterator[Store]:
    store = await Store.open(db_url, store_bodies=True)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(name="exp")
def exp_fixture() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def probs_body(probs: list[float]) -> dict[str, Any]:
    """An OIP v2 response with one probability row."""
    return {
        "model_name": "m",
        "outputs": [
            {"name": "probabilities", "shape": [1, len(probs)], "datatype": "FP32", "data": probs}
        ],
    }


def make_pair(
    i: int,
    exp: str,
    *,
    ts: datetime | None = None,
    prod_probs: list[float] | None = None,
    cand_probs: list[float] | None = None,
    cand_outcome: str = "ok",
    prod_latency: float = 3.0,
    cand_latency: float = 4.0,
    request_id: str | None = None,
) -> dict[str, Any]:
    """One wire pair as a dict (what the proxy sends)."""
    prod_probs = prod_probs or [0.7, 0.2, 0.1]
    cand_probs = cand_probs or [0.6, 0.3, 0.1]
    cand: dict[str, Any] = {
        "outcome": cand_outcome,
        "latency_ms": cand_latency,
        "model_version": "2",
    }
    if cand_outcome == "ok":
        cand |= {"status": 200, "body": probs_body(cand_probs)}
    elif cand_outcome == "error":
        cand |= {"status": 503, "body": None}
    elif cand_outcome in ("shed", "skipped"):
        cand["latency_ms"] = None
    return {
        "v": 1,
        "request_id": request_id or f"req-{i:06d}",
        "experiment": exp,
        "ts": (ts or T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
        "route": "/v2/models/m/infer",
        "request": {"sha256": hashlib.sha256(str(i).encode()).hexdigest(), "body": {"x": i}},
        "prod": {
            "outcome": "ok",
            "status": 200,
            "latency_ms": prod_latency,
            "model_version": "1",
            "body": probs_body(prod_probs),
        },
        "candidate": cand,
    }


running = serve_app  # the name the comparator's tests use
