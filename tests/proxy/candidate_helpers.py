"""Awaiting one candidate call from a test: the tee drives calls by callback, tests await them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from proxy.http.candidate import CandidateCall, CandidateClient, CandidateResponse
from proxy.http.client import encode_request

__all__ = ["request", "request_raw"]

_DROP = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})


class _AwaitedCall(CandidateCall):
    """A :class:`CandidateCall` whose result a coroutine awaits."""

    __slots__ = ("_future",)

    def __init__(
        self,
        client: CandidateClient,
        data: bytes,
        method: str,
        future: asyncio.Future[CandidateResponse],
    ) -> None:
        super().__init__(client, data, method)
        self._future = future

    def finished(self, resp: CandidateResponse | None, exc: Exception | None) -> None:
        if self._future.done():
            return
        if resp is not None:
            self._future.set_result(resp)
        else:
            self._future.set_exception(exc or ConnectionError("candidate call failed"))


async def request(
    client: CandidateClient,
    method: str,
    path_qs: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
) -> CandidateResponse:
    """Send one request and return the whole answer; the caller sets the deadline."""
    raw = [
        (name.encode("latin-1"), value.encode("utf-8", "surrogateescape"))
        for name, value in headers
        if name.lower() not in _DROP
    ]
    target = client.prefix + path_qs.encode("utf-8", "surrogateescape")
    data = encode_request(method, target, client.host_header, raw, body, always_length=True)
    return await request_raw(client, data, method)


async def request_raw(client: CandidateClient, data: bytes, method: str) -> CandidateResponse:
    """Send an already-encoded request; a cancelled await abandons the call (it lingers)."""
    future: asyncio.Future[CandidateResponse] = asyncio.get_running_loop().create_future()
    call = _AwaitedCall(client, data, method, future)
    call.start()
    try:
        return await future
    except asyncio.CancelledError:
        call.abandon()
        raise
