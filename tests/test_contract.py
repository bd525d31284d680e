"""The contract between the parts (contract/): one definition each, and the parts agree on it."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest
from pydantic import ValidationError

import contract
from comparator import replay
from comparator.wire import Pair
from contract.outcomes import REASON_MAX, Outcome, classify
from proxy.exceptions import UpstreamProtocolError, UpstreamTimeout
from proxy.tee_rules import TeeRules
from tests.comparator.store_support import make_pair
from tests.support.net import free_port


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:0", ("::1", 0)),
        (":9090", ("0.0.0.0", 9090)),
        ("host:65535", ("host", 65535)),
    ],
)
def test_host_port(value: str, expected: tuple[str, int]) -> None:
    assert contract.parse_host_port(value) == expected


@pytest.mark.parametrize("value", ["8080", "h:", "h:65536", "h:-1", "h:8o", "h:٣"])
def test_host_port_refuses_anything_else(value: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        contract.parse_host_port(value)


def test_the_tee_and_the_comparator_sample_the_same_keys() -> None:
    rng = random.Random(3)
    for rate in (0.0, 0.01, 0.3, 0.5, 0.99, 1.0):
        rules = TeeRules(["/*"], ["POST"], rate)
        keys = [f"{rng.getrandbits(64):x}-{i}" for i in range(2000)]
        picked = [k for k in keys if rules.sampled(k)]
        assert picked == [k for k in keys if contract.sampled(k, rate)]
        if 0 < rate < 1:  # and it is a sample of about that rate
            assert abs(len(picked) / len(keys) - rate) < 0.05


def test_a_pair_key_built_from_the_longest_client_id_fits_the_wire() -> None:
    longest_key = "x" * contract.MINTED_ABOVE + "~" + "0" * 16  # proxy.app.DataPort._pair_key
    assert len(longest_key) <= contract.REQUEST_ID_MAX
    doc = make_pair(1, "e", request_id=longest_key)
    assert Pair.model_validate(doc).request_id == longest_key
    doc["request_id"] = "x" * (contract.REQUEST_ID_MAX + 1)
    with pytest.raises(ValidationError, match="request_id"):
        Pair.model_validate(doc)


# --- the exception -> outcome mapping (contract.outcomes), one for the proxy and the replay ---


@pytest.mark.parametrize(
    ("exc", "outcome", "reason"),
    [
        (TimeoutError(), Outcome.TIMEOUT, "deadline 250 ms"),
        (UpstreamTimeout("no data for 1 s"), Outcome.TIMEOUT, "deadline 250 ms"),
        (asyncio.CancelledError(), Outcome.TIMEOUT, "cancelled at shutdown"),
        (
            UpstreamProtocolError("bad response: x"),
            Outcome.ERROR,
            "protocol error: bad response: x",
        ),
        (
            ConnectionRefusedError(111, "Connection refused"),
            Outcome.ERROR,
            "connect failed: Connection refused",
        ),
        (ConnectionResetError("gone"), Outcome.ERROR, "connection reset: gone"),
        (OSError(5, "I/O error"), Outcome.ERROR, "OSError: [Errno 5] I/O error"),
        (KeyError("x"), Outcome.ERROR, "unexpected KeyError"),
    ],
)
def test_classify(exc: BaseException, outcome: Outcome, reason: str) -> None:
    assert classify(exc, 250.0) == (outcome, reason)


def test_a_reason_is_bounded() -> None:
    outcome, reason = classify(UpstreamProtocolError("x" * 10_000), 250.0)
    assert outcome is Outcome.ERROR and len(reason) == REASON_MAX


async def test_the_replay_maps_real_failures_as_the_proxy_does() -> None:
    """Through real sockets: a port nobody listens on, a server that hangs up without an answer,
    and one that never answers give the replay's side the outcome the proxy's mapping gives."""

    writers: list[asyncio.StreamWriter] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # never answers: closed when the test ends

    closing = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    silent = await asyncio.start_server(hang, "127.0.0.1", 0)
    urls = {
        name: f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/"
        for name, srv in (("closing", closing), ("silent", silent))
    }
    try:
        async with aiohttp.ClientSession() as session:
            refused, refused_exc = await replay._call(
                session, f"http://127.0.0.1:{free_port()}/", b"{}", 2.0
            )
            closed, _ = await replay._call(session, urls["closing"], b"{}", 2.0)
            timed_out, _ = await replay._call(session, urls["silent"], b"{}", 0.2)
    finally:
        for writer in writers:
            writer.close()
        for srv in (closing, silent):
            srv.close()
            await srv.wait_closed()
    assert refused.outcome is Outcome.ERROR and refused.error is not None
    assert refused.error.startswith("connect failed: ")
    assert isinstance(refused_exc, aiohttp.ClientConnectorError)
    assert closed.outcome is Outcome.ERROR and closed.error is not None
    assert closed.error.startswith("ServerDisconnectedError")
    assert (timed_out.outcome, timed_out.error, timed_out.latency_ms) == (
        Outcome.TIMEOUT,
        classify(TimeoutError(), 200.0)[1],
        200.0,
    )
