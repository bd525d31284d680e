"""The baseline: a tee proxy as it is usually first written with aiohttp.

This is deliberately the naive version, the one the benchmark compares shadowtee with:

* one ``ClientSession`` (one connection pool, one limit of 100) shared by production and candidate
  calls, so a slow candidate holds connections that production requests then wait for;
* the candidate call is ``asyncio.create_task(...)`` fire-and-forget: nothing bounds how many are in
  flight, nothing accounts for them, and there is no candidate deadline;
* ``web.run_app`` defaults (the standard asyncio loop, default access logger).

Usage: ``python bench/handwritten_tee.py --port P --prod URL --candidate URL``.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web

__all__ = ["create_app", "main"]

SESSION = web.AppKey("session", aiohttp.ClientSession)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


async def _shadow(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> None:
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
    except Exception:
        pass


def create_app(prod: str, candidate: str) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[SESSION] = aiohttp.ClientSession()
        yield
        await app[SESSION].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        session = app[SESSION]
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if request.method == "POST":
            asyncio.create_task(  # noqa: RUF006 - fire-and-forget is the point of this baseline
                _shadow(session, candidate + request.path_qs, body, {**headers, "X-Shadow": "1"})
            )
        async with session.request(
            request.method, prod + request.path_qs, data=body, headers=headers
        ) as resp:
            payload = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=resp.status, body=payload, headers=out)

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a naive aiohttp tee proxy (benchmark baseline)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prod", required=True)
    parser.add_argument("--candidate", required=True)
    args = parser.parse_args(argv)
    web.run_app(
        create_app(args.prod.rstrip("/"), args.candidate.rstrip("/")),
        host="127.0.0.1",
        port=args.port,
        print=None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
