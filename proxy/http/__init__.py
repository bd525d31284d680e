"""The data port's HTTP/1.1 layer: the server connection, upstream connections, a pool, flow control.

::

    server side   listener.Server         the listening socket, connection and byte limits
                  server.Connection       one client connection: a queue, dispatch
                  parse.RequestParsing    its llhttp callbacks and clocks; a Message per request
                  closing.Closing         its close, its reset after a cut, its lingering close
                  message                 Request, Refusal (a frozen record), Limits
                  body.BodyStream         a large request body, handed over as it arrives
    both sides    flow.FlowControl        pause/resume reading, drain writing; flow.delivered
    client side   client.ClientConnection one upstream connection: send, finish, timeout
                  answer.AnswerParsing    its llhttp callbacks and the checks llhttp lacks
                  exchange                its states (an enum), the answer head, callbacks
                  pool.Pool               acquire / release / discard / linger
                  production              ProductionClient (streamed answers, one retry rule)
                  candidate               CandidateClient, CandidateCall (whole answers)

Upstream errors live in :mod:`proxy.exceptions`; :func:`contract.outcomes.classify` maps them to outcomes.
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
