"""The upstream clients' old import path, kept for existing imports.

The clients live in :mod:`proxy.http` now (:mod:`proxy.http.production`,
:mod:`proxy.http.candidate`, :mod:`proxy.http.client`) and their errors in
:mod:`proxy.exceptions`.
"""

from __future__ import annotations

from proxy.exceptions import UpstreamProtocolError, UpstreamTimeout
from proxy.http.candidate import CandidateCall, CandidateClient, CandidateResponse
from proxy.http.client import encode_request
from proxy.http.production import ProductionClient, ProductionResponse

__all__ = [
    "CandidateCall",
    "CandidateClient",
    "CandidateResponse",
    "ProductionClient",
    "ProductionResponse",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "encode_request",
]
