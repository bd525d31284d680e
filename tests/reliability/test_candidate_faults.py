"""Candidate faults never reach the client, and each one is recorded for what it was.

One real ``shadowtee proxy`` process in front of a fake production and a fake candidate whose
behaviour is picked by the model name in the path. For every fault the client's response is
compared byte for byte with production's own answer to the same request, the pair the comparator
receives says what happened, and the proxy's metrics count it under the right outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from contract.outcomes import Outcome
from tests.reliability.conftest import Upstreams
from tests.reliability.fakes import (
    BIG_BYTES,
    DEEP_BODY,
    LONG_NUMBER_BODY,
    ProxyProcess,
    free_port,
    infer_body,
    wait_until,
)

K = 3  # requests per fault
SHADOW_MS = 2000
OUTCOMES = "shadowtee_proxy_candidate_outcomes_total"

# mode -> (expected candidate outcome, expected candidate status)
EXPECTED: dict[str, tuple[Outcome, int | None]] = {
    "ok": (Outcome.OK, 200),
    "hang": (Outcome.TIMEOUT, None),
    "hangheaders": (Outcome.TIMEOUT, None),
    "reset": (Outcome.ERROR, None),
    "e500": (Outcome.OK, 500),
    "garbage": (Outcome.OK, 200),
    "deep": (Outcome.OK, 200),
    "longnumber": (Outcome.OK, 200),
    "swap": (Outcome.OK, 200),
}


def _same_as_direct(client: httpx.Client, proxy: str, prod: str, path: str, body: bytes) -> str:
    """POST to the proxy and straight to production; assert identical answers; return the id."""
    headers = {"Content-Type": "application/json"}
    via = client.post(proxy + path, content=body, headers=headers)
    direct = client.post(prod + path, content=body, headers=headers)
    assert via.status_code == direct.status_code == 200
    assert via.content == direct.content
    for name in ("Content-Type", "Content-Length", "X-Model-Version", "X-Prod-Custom"):
        assert via.headers.get(name) == direct.headers.get(name), name
    rid = via.headers["X-Shadow-Request-Id"]
    assert rid
    return rid


def _outcomes(proxy: ProxyProcess) -> dict[str, float]:
    return {o.value: proxy.metric(OUTCOMES, outcome=o.value) for o in Outcome}


@pytest.mark.timeout(120)
def test_every_candidate_fault_is_invisible_to_the_client_and_classified(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    proxy = start_proxy(
        prod=up.prod_url,
        candidate=up.cand_url,
        comparator=up.comp_url,
        shadow_timeout_ms=SHADOW_MS,
    )
    sent: dict[str, tuple[str, bytes]] = {}  # request id -> (mode, request body)
    with httpx.Client(timeout=30) as client:
        for mode in EXPECTED:
            for i in range(K):
                body = infer_body(i, size=17 * (i + 1) + len(mode))
                rid = _same_as_direct(
                    client, proxy.url, up.prod_url, f"/v2/models/{mode}/infer", body
                )
                sent[rid] = (mode, body)
    wait_until(lambda: set(sent) <= set(up.comp.request_ids), "every pair at the comparator", 30)
    up.cand.gate.open()
    wait_until(proxy.settled, "no tee in flight and an empty pairing buffer")

    pairs = up.comp.by_id()
    assert len(up.comp.request_ids) == len(set(up.comp.request_ids)) == len(sent)
    for rid, (mode, _body) in sent.items():
        pair = pairs[rid]
        want_outcome, want_status = EXPECTED[mode]
        assert pair.candidate.outcome is want_outcome, (mode, pair.candidate)
        assert pair.candidate.status == want_status, (mode, pair.candidate)
        # Production's side is always the real answer to this very request.
        assert pair.prod.outcome is Outcome.OK and pair.prod.status == 200
        assert isinstance(pair.prod.body, dict)
        assert pair.prod.body["echo_sha"] == pair.request.sha256
        _check_candidate_side(mode, pair.candidate, up.cand.answered_for.get(rid))

    counts = _outcomes(proxy)
    assert counts["ok"] == K * 6  # ok, e500, garbage, deep, longnumber, swap
    assert counts["timeout"] == K * 2
    assert counts["error"] == K
    assert counts["shed"] == counts["skipped"] == 0


def _check_candidate_side(mode: str, side: Any, answered_for: str | None) -> None:
    if mode == "hang" or mode == "hangheaders":
        assert side.latency_ms == SHADOW_MS  # right-censored at the deadline
        assert side.body is None
    elif mode == "reset":
        assert side.error and any(w in side.error for w in ("reset", "payload", "disconnect"))
    elif mode == "e500":
        assert side.is_error
    elif mode == "garbage":
        assert side.body is None and side.body_bytes == len(b"\x00\xff not json {{{")
    elif mode == "deep":  # its pair and every other pair of its batch are stored
        assert side.body is None and side.body_bytes == len(DEEP_BODY)
    elif mode == "longnumber":  # the same
        assert side.body is None and side.body_bytes == len(LONG_NUMBER_BODY)
    elif mode == "swap":
        # The candidate claimed to answer another request; the pair keeps the request it was
        # sent (the proxy joins by its own id, never by what the candidate says).
        assert answered_for is not None
        assert side.body["request_id"] == answered_for


def test_candidate_connection_refused(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    proxy = start_proxy(
        prod=up.prod_url, candidate=f"http://127.0.0.1:{free_port()}", comparator=up.comp_url
    )
    rids = []
    with httpx.Client(timeout=30) as client:
        for i in range(K):
            rids.append(
                _same_as_direct(
                    client, proxy.url, up.prod_url, "/v2/models/ok/infer", infer_body(i)
                )
            )
    wait_until(lambda: set(rids) <= set(up.comp.request_ids), "the pairs")
    for rid in rids:
        side = up.comp.by_id()[rid].candidate
        assert side.outcome is Outcome.ERROR
        assert side.error and "connect" in side.error
    assert proxy.metric(OUTCOMES, outcome="error") == K
    wait_until(proxy.settled, "settled")


@pytest.mark.timeout(90)
def test_candidate_answering_50_mib(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """A 50 MiB answer is read and counted by size; it never reaches a pair or the client.

    The deadline is generous so the outcome does not depend on how fast this machine copies
    50 MiB; the point is the client's answer and the pair's shape.
    """
    proxy = start_proxy(
        prod=up.prod_url, candidate=up.cand_url, comparator=up.comp_url, shadow_timeout_ms=60_000
    )
    with httpx.Client(timeout=30) as client:
        rid = _same_as_direct(client, proxy.url, up.prod_url, "/v2/models/big/infer", infer_body(1))
    wait_until(lambda: rid in up.comp.request_ids, "the pair", 60)
    side = up.comp.by_id()[rid].candidate
    assert side.outcome is Outcome.OK and side.status == 200
    assert side.body is None and side.body_bytes == BIG_BYTES
    assert max(len(raw) for raw in up.comp.raw) < 1024 * 1024  # the body itself never travels
    assert proxy.metric(OUTCOMES, outcome="ok") == 1
    wait_until(proxy.settled, "settled")
