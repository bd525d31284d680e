"""shadowtee's sidecar proxy: serve clients from production, tee to the candidate, ship pairs.

::

    client ──▶ app.handle ──▶ production (aiohttp pool)          the only path a client waits on
                  │ tee.submit (sync, bounded, never awaited)
                  └──▶ upstream.CandidateClient (own pool, deadline, lingering connections)
                  │
    pairing.PairingBuffer (sync, bounded, keyed by request id, deadline eviction)
                  │ shipper.Shipper: JSON batches, retries with jitter, spool.Spool on disk
                  ▼
             comparator  POST /v1/pairs

Modules: :mod:`~proxy.settings` (every option), :mod:`~proxy.app` (data port and resource
lifetimes), :mod:`~proxy.tee`, :mod:`~proxy.upstream`, :mod:`~proxy.pairing`,
:mod:`~proxy.encode`, :mod:`~proxy.shipper`, :mod:`~proxy.spool`, :mod:`~proxy.metrics`,
:mod:`~proxy.admin` (admin port), :mod:`~proxy.server` (run and ordered shutdown),
:mod:`~proxy.headers`, :mod:`~proxy.outcomes`, :mod:`~proxy.exceptions`.
"""

from proxy.admin import create_admin_app
from proxy.app import DataPort
from proxy.server import serve
from proxy.settings import ProxySettings

__all__ = ["DataPort", "ProxySettings", "create_admin_app", "serve"]
