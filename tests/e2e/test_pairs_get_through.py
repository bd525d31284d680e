"""Pairs always get through: the real proxy in front of two small model servers, shipping to the real
comparator, on SQLite and on the real PostgreSQL server.

The model servers are raw asyncio sockets on 127.0.0.1 (port 0), so they can answer what aiohttp
would not send: a status of 999, a NUL in ``X-Model-Version``. After every test the proxy's
accounting balances exactly: teed == delivered + dropped{reason} + in flight (:func:`balanced`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import select

from comparator.app import create_app
from comparator.routes import STORE
from comparator.settings import ComparatorSettings
from comparator.store.dialect import EXP, PAIRS, QUARANTINE
from comparator.store.store import Store
from tests.comparator.store_support import (  # noqa: F401 - fixtures
    db_url_fixture,
    exp_fixture,
    running,
)
from tests.proxy.fakes import admin_status, free_port, running_proxy

TOKEN = "pairs-get-through"
INFER = "/v2/models/m/infer"


# --- a raw model server ---------------------------------------------------------------------------


def _answer(role: str, path: str, body: bytes) -> bytes:
    """The response bytes for one request: what the path asks of this side (``prod``/``cand``)."""
    status, version = b"200 OK", b"1" if role == "prod" else b"2"
    size = 200
    if "/size-" in path:  # /v2/models/size-<bytes>/infer
        size = int(path.split("/size-", 1)[1].split("/", 1)[0])
    if f"/status999-{role}/" in path:
        status = b"999 Odd"
    if f"/nulversion-{role}/" in path:
        version += b"\x00x"
    pad = "x" * max(0, size - 120)
    doc = {"model_name": "m", "outputs": [{"name": "y", "shape": [1], "data": [len(body)]}]}
    doc["pad"] = pad
    data = json.dumps(doc).encode()
    head = b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nX-Model-Version: %s\r\n" % (
        status,
        version,
    )
    return head + b"Content-Length: %d\r\n\r\n" % len(data) + data


@contextlib.asynccontextmanager
async def model_server(role: str) -> AsyncIterator[str]:
    """A keep-alive HTTP/1.1 model server on 127.0.0.1:0; yields its base URL."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = unquote(lines[0].split(" ")[1], errors="surrogateescape")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                writer.write(_answer(role, path, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


# --- the comparator and the accounting ---------------------------------------------------------


@contextlib.asynccontextmanager
async def comparator(db_url: str, **kw: Any) -> AsyncIterator[tuple[str, Store]]:
    settings = ComparatorSettings(db=db_url, token=SecretStr(TOKEN), **kw)
    app = create_app(settings, CollectorRegistry())
    async with running(app) as base:
        yield base, app[STORE]


def balanced(status: dict[str, Any], *, settled: bool = True) -> dict[str, Any]:
    """Assert the proxy's accounting balances exactly (and, when ``settled``, that nothing is
    still on its way but what the spool holds); return it."""
    acc: dict[str, Any] = status["accounting"]
    in_flight = acc["in_flight"]
    assert acc["unaccounted"] == 0, acc
    assert acc["teed"] + acc["inherited"] == (
        acc["delivered"] + acc["dropped"] + sum(in_flight.values())
    ), acc
    assert acc["dropped"] == sum(acc["dropped_by_reason"].values()), acc
    if settled:
        assert (in_flight["buffer"], in_flight["queue"], in_flight["shipping"]) == (0, 0, 0), acc
    return acc


async def stored(store: Store, exp: str) -> list[tuple[str, str, str | None, str | None]]:
    """(request id, route, prod outcome, cand outcome) of the experiment's stored pairs."""
    exp_id = select(EXP.c.id).where(EXP.c.name == exp).scalar_subquery()
    q = select(PAIRS.c.request_id, PAIRS.c.route, PAIRS.c.prod_outcome, PAIRS.c.cand_outcome)
    async with store.engine.connect() as conn:
        rows = await conn.execute(q.where(PAIRS.c.experiment_id == exp_id))
        return [(r[0], r[1], r[2], r[3]) for r in rows]


async def settle(
    http: aiohttp.ClientSession, admin: str, store: Store, exp: str, n: int
) -> dict[str, Any]:
    """Wait (bounded) until ``n`` pairs are stored and the proxy holds none; its status."""
    for _ in range(1000):
        status = await admin_status(http, admin)
        acc = status["accounting"]
        info = await store.get_experiment(exp)
        done = info is not None and info.n_pairs >= n
        if done and sum(acc["in_flight"].values()) == 0:
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"pairs did not settle: {status['accounting']}")


async def send(
    http: aiohttp.ClientSession,
    url: str,
    paths: list[str],
    headers: list[dict[str, str]] | None = None,
) -> list[str]:
    """POST each path (4 at a time); the request ids the proxy answered with."""
    sem = asyncio.Semaphore(4)

    async def one(i: int, path: str) -> str:
        async with (
            sem,
            http.post(url + path, json={"i": i}, headers=(headers[i] if headers else None)) as r,
        ):
            await r.read()
            return r.headers.get("X-Shadow-Request-Id", "")

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(paths))))


def proxy_fields(prod: str, cand: str, base: str, exp: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "prod": prod,
        "candidate": cand,
        "comparator": base,
        "comparator_token": TOKEN,
        "experiment": exp,
        "spool_dir": str(tmp_path / "spool"),
        "shadow_timeout_ms": 5_000,
        "ship_retries": 1,
    }


# --- the tests --------------------------------------------------------------------------------


async def test_answers_of_20_to_120_kb_deliver_every_pair(
    db_url: str, exp: str, tmp_path: Path
) -> None:
    """1 MiB comparator limit, 8 MiB proxy default: the first batch meets a 413 (halved, then the
    announced limit is learnt); every later batch is cut below it."""
    rng = random.Random(17)
    paths = [f"/v2/models/size-{rng.randint(20_000, 120_000)}/infer" for _ in range(60)]
    async with (
        model_server("prod") as prod,
        model_server("cand") as cand,
        comparator(db_url, max_body_bytes=1024 * 1024) as (base, store),
        aiohttp.ClientSession() as http,
        running_proxy(**proxy_fields(prod, cand, base, exp, tmp_path)) as proxy,
    ):
        await send(http, proxy.url, paths)
        status = await settle(http, proxy.admin, store, exp, 60)
        acc = balanced(status)
        assert (acc["teed"], acc["delivered"], acc["dropped"]) == (60, 60, 0)
        assert await store.count_pairs(exp) == 60


async def test_poisoned_requests_lose_no_other_pair(db_url: str, exp: str, tmp_path: Path) -> None:
    """A NUL route, a ``%ff`` path, a status of 999 and a NUL model version from either side: the
    proxy records each in a form every store accepts (U+FFFD for the text, a protocol error for
    the status), so every pair is stored and none is lost; each repaired pair is also listed in
    the comparator's quarantine (reason ``repaired``)."""
    odd = [
        "/v2/models/a%00b/infer",
        "/v2/models/%ff/infer",
        "/v2/models/status999-prod/infer",
        "/v2/models/status999-cand/infer",
        "/v2/models/nulversion-prod/infer",
        "/v2/models/nulversion-cand/infer",
    ]
    paths = [INFER] * 24
    for k, p in enumerate(odd):
        paths[4 * k + 2] = p
    ids = [f"odd-{i}" for i in range(len(paths))]
    async with (
        model_server("prod") as prod,
        model_server("cand") as cand,
        comparator(db_url) as (base, store),
        aiohttp.ClientSession() as http,
        running_proxy(**proxy_fields(prod, cand, base, exp, tmp_path)) as proxy,
    ):
        # Client ids, to find each pair: a production answer the proxy cannot read (the NUL
        # version) reaches the client as a 502, without the id header.
        await send(http, proxy.url, paths, [{"X-Shadow-Request-Id": i} for i in ids])
        status = await settle(http, proxy.admin, store, exp, 24)
        acc = balanced(status)
        assert (acc["teed"], acc["delivered"], acc["dropped"]) == (24, 24, 0)
        # Stored under the client's id and a nonce of the proxy's (see DataPort._pair_key).
        rows = {r[0].split("~")[0]: r for r in await stored(store, exp)}
    assert len(rows) == 24 and sorted(rows) == sorted(ids)
    by_path = {p: rows[i] for p, i in zip(paths, ids, strict=True)}
    assert by_path["/v2/models/a%00b/infer"][1] == "/v2/models/a\ufffdb/infer"
    assert by_path["/v2/models/%ff/infer"][1] == "/v2/models/\ufffd/infer"
    assert by_path["/v2/models/status999-prod/infer"][2] == "error"
    assert by_path["/v2/models/status999-cand/infer"][3] == "error"
    assert by_path["/v2/models/nulversion-prod/infer"][2] == "error"  # unreadable: a 502
    assert by_path[INFER][2:] == ("ok", "ok")
    async with comparator(db_url) as (_, store2), store2.engine.connect() as conn:
        q = select(QUARANTINE.c.request_id, QUARANTINE.c.reason, QUARANTINE.c.detail).where(
            QUARANTINE.c.experiment == exp
        )
        kept = {r[0].split("~")[0]: (r[1], r[2]) for r in (await conn.execute(q)).all()}
    # Each repaired pair is listed in the quarantine (and stored); a NUL in a model's
    # X-Model-Version makes its whole answer malformed HTTP: that side's protocol error.
    assert kept == {
        ids[paths.index(p)]: ("repaired", f"stored; repaired by the proxy: {field}")
        for p, field in (
            ("/v2/models/a%00b/infer", "route"),
            ("/v2/models/%ff/infer", "route"),
            ("/v2/models/status999-prod/infer", "prod.status"),
            ("/v2/models/status999-cand/infer", "candidate.status"),
        )
    }
    assert by_path["/v2/models/nulversion-cand/infer"][2:] == ("ok", "error")


async def test_a_stray_spool_file_is_moved_aside_and_shipping_goes_on(
    db_url: str, exp: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "notes.json").write_text("{}")
    (spool / "0000000000000003-2.json").write_bytes(b"\x00garbage")
    async with (
        model_server("prod") as prod,
        model_server("cand") as cand,
        comparator(db_url) as (base, store),
        aiohttp.ClientSession() as http,
        running_proxy(**proxy_fields(prod, cand, base, exp, tmp_path)) as proxy,
    ):
        await send(http, proxy.url, [INFER] * 10)
        status = await settle(http, proxy.admin, store, exp, 10)
        acc = balanced(status)
        assert (acc["delivered"], acc["dropped"]) == (10, 0)
        assert status["counters"]["spool_files_set_aside"] == 2
    assert sorted(p.name for p in (spool / "rejected").iterdir()) == [
        "stray-0000000000000003-2.json",
        "stray-notes.json",
    ]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 64 KiB tmpfs for the spool (mounting needs root: skipped, with that reason, without)."""
    if os.geteuid() != 0:
        pytest.skip("a tmpfs mount needs root; test_spool covers ENOSPC with a patched write")
    where = tmp_path / "tiny"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_a_full_disk_counts_the_pairs_it_could_not_spool(
    exp: str, tmp_path: Path, tiny_disk: Path
) -> None:
    """The comparator is away; the spool's disk fills up: every pair is spooled or counted as
    dropped (spool_write_error), and the proxy keeps serving."""
    fields = proxy_fields("", "", f"http://127.0.0.1:{free_port()}", exp, tmp_path)
    async with model_server("prod") as prod, model_server("cand") as cand:
        fields |= {
            "prod": prod,
            "candidate": cand,
            "spool_dir": str(tiny_disk),
            "batch_size": 5,
            "ship_retries": 0,
            "max_spool_bytes": 10 * 1024 * 1024,  # the disk, not the bound, runs out
        }
        paths = ["/v2/models/size-4000/infer"] * 60
        async with aiohttp.ClientSession() as http, running_proxy(**fields) as proxy:
            await send(http, proxy.url, paths)
            for _ in range(500):
                acc = balanced((await admin_status(http, proxy.admin)), settled=False)
                if acc["in_flight"]["buffer"] + acc["in_flight"]["queue"] == 0 and (
                    acc["in_flight"]["shipping"] == 0
                ):
                    break
                await asyncio.sleep(0.02)
            acc = balanced(await admin_status(http, proxy.admin))
    assert acc["teed"] == 60
    assert acc["dropped_by_reason"].get("spool_write_error", 0) > 0
    assert acc["in_flight"]["spool"] > 0  # what fitted is kept
    assert acc["in_flight"]["spool"] + acc["dropped"] == 60


async def test_a_pre_claimed_id_discards_no_other_clients_pair(
    db_url: str, exp: str, tmp_path: Path
) -> None:
    """An attacker sends the ids a victim will use, and the next ids it predicts from a minted
    one; every pair of the victim is stored all the same."""
    async with (
        model_server("prod") as prod,
        model_server("cand") as cand,
        comparator(db_url) as (base, store),
        aiohttp.ClientSession() as http,
        running_proxy(**proxy_fields(prod, cand, base, exp, tmp_path)) as proxy,
    ):
        (minted,) = await send(http, proxy.url, [INFER])
        prefix, counter, _ = minted.split("-")
        guesses = [f"{prefix}-{int(counter, 16) + k:x}-{'0' * 16}" for k in range(1, 6)]
        claimed = [{"X-Shadow-Request-Id": f"victim-{k}"} for k in range(5)]
        claimed += [{"X-Shadow-Request-Id": g} for g in guesses]
        await send(http, proxy.url, [INFER] * 10, claimed)
        await settle(http, proxy.admin, store, exp, 11)
        victim = await send(http, proxy.url, [INFER] * 10)  # minted ids
        victim += await send(
            http, proxy.url, [INFER] * 5, [{"X-Shadow-Request-Id": f"victim-{k}"} for k in range(5)]
        )
        assert victim[10:] == [f"victim-{k}" for k in range(5)]  # its own id comes back
        status = await settle(http, proxy.admin, store, exp, 26)
        acc = balanced(status)
        assert (acc["teed"], acc["delivered"], acc["dropped"]) == (26, 26, 0)
        info = await store.get_experiment(exp)
        assert info is not None and info.n_pairs == 26
        keys = [r[0] for r in await stored(store, exp)]
    assert sum(k.startswith("victim-") for k in keys) == 10
    assert not set(victim[:10]) & set(guesses)
