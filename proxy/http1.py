"""The data port server's old import path, kept for existing imports.

The server lives in :mod:`proxy.http.server` (connections, the listening socket) and
:mod:`proxy.http.message` (requests, refusals, limits) now.
"""

from __future__ import annotations

from proxy.http.listener import Server
from proxy.http.message import Limits, Refusal, Request, simple_response
from proxy.http.server import Connection

__all__ = ["Connection", "Limits", "Refusal", "Request", "Server", "simple_response"]
