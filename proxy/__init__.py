"""shadowtee's sidecar proxy: serve clients from production, tee to the candidate, ship pairs.

::

    client ──▶ http.server.Connection ──▶ app.DataPort.handle ──▶ http.production (pool)
                  │ tee.Tee.submit (sync, bounded, never awaited)      the only path a client waits on
                  └──▶ http.candidate.CandidateClient (own pool, deadline, lingering connections)
                  │
    pairing.PairingBuffer (sync, bounded, keyed by request id, deadline eviction)
                  │ shipper.Shipper: JSON batches, retries with jitter, failover, spool.Spool on disk
                  ▼
             comparator(s)  POST /v1/pairs

Modules: :mod:`~proxy.settings` (every option), :mod:`~proxy.app` (the data port),
:mod:`~proxy.state` (its resources and their lifetimes), :mod:`~proxy.http` (the HTTP/1.1 server
and clients), :mod:`~proxy.tee` and :mod:`~proxy.tee_rules`, :mod:`~proxy.pairing`,
:mod:`~proxy.pair_json`, :mod:`~proxy.shipper` and :mod:`~proxy.comparators`, :mod:`~proxy.spool`,
:mod:`~proxy.metrics`, :mod:`~proxy.admin` (admin port), :mod:`~proxy.control` and
:mod:`~proxy.breaker` (live control of the tee), :mod:`~proxy.validate` (opt-in input checks),
:mod:`~proxy.server` (run and ordered shutdown), :mod:`~proxy.headers`, :mod:`~proxy.exceptions`.
"""

from proxy.admin import create_admin_app
from proxy.app import DataPort
from proxy.server import serve
from proxy.settings import ProxySettings

__all__ = ["DataPort", "ProxySettings", "create_admin_app", "serve"]
