"""The proxy's exceptions, and where upstream failures become data instead.

::

    ProxyError                 base of everything the proxy raises on purpose
    └── SpoolError             the on-disk spool could not be read or written

Failures of the candidate (or of production) are *not* exceptions past :mod:`proxy.outcomes`:
``classify()`` maps ``OSError``/``TimeoutError`` from :mod:`proxy.upstream` to an :class:`~comparator.wire.Outcome`
and a short reason, and the pair records them.
"""

from __future__ import annotations

__all__ = ["ProxyError", "SpoolError"]


class ProxyError(Exception):
    """Base class of the proxy's own errors."""


class SpoolError(ProxyError):
    """The spool directory is unusable (permissions, disk full, corrupt file)."""
