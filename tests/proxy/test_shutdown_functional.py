"""SIGTERM on the real ``shadowtee proxy`` process: in-flight requests finish, no pair is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from contract.outcomes import Outcome
from tests.proxy.fakes import FakeCandidate, FakeComparator, serve_app, wait_for

N = 8


def _spooled(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


async def test_sigterm_drains_requests_and_ships_every_pair(tmp_path: Path) -> None:
    arrived = 0
    release = asyncio.Event()

    async def infer(request: web.Request) -> web.Response:
        nonlocal arrived
        await request.read()
        arrived += 1
        await release.wait()
        return web.json_response({"outputs": [{"name": "y", "shape": [1], "data": [1]}]})

    prod_app = web.Application()
    prod_app.router.add_post("/v2/models/{name}/infer", infer)
    candidate = FakeCandidate(mode="hang")
    comparator = FakeComparator()
    async with (
        serve_app(prod_app) as prod,
        serve_app(candidate.app()) as cand,
        serve_app(comparator.app()) as comp,
    ):
        env = dict(os.environ)
        env.update(
            SHADOWTEE_PROXY__SPOOL_DIR=str(tmp_path),
            SHADOWTEE_PROXY__TEE_GRACE_MS="100",
            SHADOWTEE_PROXY__FLUSH_INTERVAL_MS="60000",  # only the shutdown flush ships
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadowtee", "proxy",
            "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
            "--prod", prod, "--candidate", cand, "--comparator", comp,
            "--shadow-timeout-ms", "60000", "--experiment", "drain-test",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line.startswith("shadowtee proxy ready"), line
            data_url = line.split("data=")[1].split()[0]
            async with aiohttp.ClientSession() as client:

                async def one(i: int) -> int:
                    async with client.post(f"{data_url}/v2/models/m/infer", json={"i": i}) as resp:
                        await resp.read()
                        return resp.status

                requests = [asyncio.create_task(one(i)) for i in range(N)]
                await wait_for(
                    lambda: arrived == N and len(candidate.requests) == N, "all in flight"
                )
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.2)  # let the signal land; correctness does not depend on it
                release.set()
                statuses = await asyncio.wait_for(asyncio.gather(*requests), 20)
            rc = await asyncio.wait_for(proc.wait(), 30)
        finally:
            candidate.release.set()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert statuses == [200] * N
        assert rc == 0
        assert len(comparator.pairs) == N
        assert {p.candidate.outcome for p in comparator.pairs} == {Outcome.TIMEOUT}
        assert all(p.prod.status == 200 and p.experiment == "drain-test" for p in comparator.pairs)
        assert not _spooled(tmp_path)
