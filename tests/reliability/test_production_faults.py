"""Production faults: the client gets a clear gateway error, the proxy lives on, nothing leaks.

Every test ends the same way: the proxy still answers a healthy request, no candidate call is left
in flight (``tee_inflight`` back to 0) and no half-pair waits in the buffer — so a production fault
can never orphan a shadow call or grow memory.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

from contract.outcomes import Outcome
from tests.reliability.conftest import Upstreams
from tests.reliability.fakes import ProxyProcess, free_port, infer_body, wait_until

JSON = {"Content-Type": "application/json"}


def _still_serves(proxy: ProxyProcess) -> None:
    with httpx.Client(timeout=10) as client:
        ok = client.post(proxy.url + "/v2/models/ok/infer", content=infer_body(7), headers=JSON)
    assert ok.status_code == 200
    wait_until(proxy.settled, "no tee in flight and an empty pairing buffer")
    assert proxy.proc.poll() is None


def test_production_unreachable_is_502_and_the_pair_says_so(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    proxy = start_proxy(
        prod=f"http://127.0.0.1:{free_port()}", candidate=up.cand_url, comparator=up.comp_url
    )
    with httpx.Client(timeout=10) as client:
        resp = client.post(proxy.url + "/v2/models/ok/infer", content=infer_body(1), headers=JSON)
        ready = client.get(proxy.admin + "/health/ready")
    assert resp.status_code == 502
    assert ready.status_code == 503  # a load balancer stops sending here
    rid = resp.headers.get("X-Shadow-Request-Id")
    wait_until(lambda: len(up.comp.pairs) == 1, "the pair")
    pair = up.comp.pairs[0]
    if rid is not None:
        assert pair.request_id == rid
    assert pair.prod.outcome is Outcome.ERROR
    assert pair.candidate.outcome is Outcome.OK  # the candidate call was not orphaned
    assert proxy.metric("shadowtee_proxy_production_errors_total", kind="unreachable") == 1
    wait_until(proxy.settled, "settled")
    assert proxy.proc.poll() is None


def test_production_slower_than_its_timeout_is_504(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    proxy = start_proxy(
        prod=up.prod_url,
        candidate=up.cand_url,
        comparator=up.comp_url,
        env={"SHADOWTEE_PROXY__PROD_TIMEOUT_MS": "300"},
    )
    try:
        with httpx.Client(timeout=30) as client:
            resp = client.post(proxy.url + "/v2/models/phang/infer", content=infer_body(1), headers=JSON)  # fmt: skip
        assert resp.status_code == 504
        wait_until(lambda: len(up.comp.pairs) == 1, "the pair")
        assert up.comp.pairs[0].prod.outcome is Outcome.TIMEOUT
        assert proxy.metric("shadowtee_proxy_production_errors_total", kind="timeout") == 1
    finally:
        up.prod.gate.open()
    _still_serves(proxy)


def test_production_reset_mid_body_is_a_gateway_error(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """Production promises 1000 bytes, sends 12 and drops the connection: a gateway error (502)."""
    proxy = start_proxy(prod=up.prod_url, candidate=up.cand_url, comparator=up.comp_url)
    with httpx.Client(timeout=10) as client:
        resp = client.post(proxy.url + "/v2/models/preset/infer", content=infer_body(1), headers=JSON)  # fmt: skip
    wait_until(lambda: len(up.comp.pairs) == 1, "the pair")
    assert up.comp.pairs[0].prod.outcome is Outcome.ERROR
    _still_serves(proxy)
    assert "Traceback" not in proxy.stderr()
    assert resp.status_code == 502, resp.text


def test_production_reset_mid_stream_truncates_the_client_response(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """A streamed body (5 MiB declared) cut after 64 KiB: headers already left, so the client
    must see a broken response — never a short body presented as complete."""
    proxy = start_proxy(prod=up.prod_url, candidate=up.cand_url, comparator=up.comp_url)
    with (
        httpx.Client(timeout=10) as client,
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
    ):
        client.post(proxy.url + "/v2/models/presetbig/infer", content=infer_body(1), headers=JSON)
    wait_until(lambda: len(up.comp.pairs) == 1, "the pair")
    assert up.comp.pairs[0].prod.outcome is Outcome.ERROR
    _still_serves(proxy)


def _disconnect_mid_response(up: Upstreams, proxy: ProxyProcess) -> None:
    """The client reads the first chunk and hangs up while production is still streaming."""
    host, port = urlsplit(proxy.url).hostname, urlsplit(proxy.url).port
    body = infer_body(1)
    head = (
        f"POST /v2/models/pstream/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(head + body)
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # The connection is gone (RST); now production finishes its answer to nobody.
    wait_until(lambda: len(up.prod.seen) == 1, "production saw the request")
    up.prod.gate.open()
    wait_until(lambda: len(up.comp.pairs) == 1, "the pair of the abandoned request")
    assert up.comp.pairs[0].candidate.outcome is Outcome.OK


def test_client_disconnecting_mid_response_orphans_nothing(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    proxy = start_proxy(prod=up.prod_url, candidate=up.cand_url, comparator=up.comp_url)
    _disconnect_mid_response(up, proxy)
    _still_serves(proxy)


def test_client_disconnect_is_not_logged_as_a_server_error(
    up: Upstreams, start_proxy: Callable[..., ProxyProcess]
) -> None:
    """A client hanging up is routine at scale: one traceback per disconnect floods the log."""
    proxy = start_proxy(prod=up.prod_url, candidate=up.cand_url, comparator=up.comp_url)
    _disconnect_mid_response(up, proxy)
    _still_serves(proxy)
    assert "Traceback" not in proxy.stderr()
