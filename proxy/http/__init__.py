"""The data port's HTTP/1.1 layer: the server connection, upstream connections, a pool, flow control.

::

    flow.FlowControl        pause/resume reading, drain writing; one per connection, both sides
    client.ClientConnection one upstream connection: llhttp-parsed answers, a state enum
    pool.Pool               acquire / release / discard / linger, asking connections their state
    production              ProductionClient, ProductionResponse (streamed, one retry rule)
    candidate               CandidateClient, CandidateCall (whole answers, lingering)

Upstream errors live in :mod:`proxy.exceptions`; :mod:`proxy.outcomes` maps them to outcomes.
"""

from __future__ import annotations

from proxy.http.candidate import CandidateCall, CandidateClient, CandidateResponse
from proxy.http.client import ClientConnection, ConnectionState, encode_request
from proxy.http.flow import FlowControl
from proxy.http.pool import Pool
from proxy.http.production import ProductionClient, ProductionResponse

__all__ = [
    "CandidateCall",
    "CandidateClient",
    "CandidateResponse",
    "ClientConnection",
    "ConnectionState",
    "FlowControl",
    "Pool",
    "ProductionClient",
    "ProductionResponse",
    "encode_request",
]
