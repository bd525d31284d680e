"""The proxy's exceptions, and where upstream failures become data instead.

::

    ProxyError                 base of everything the proxy raises on purpose
    └── SpoolError             the on-disk spool could not be read or written

    ConnectionError (OSError)
    └── contract.outcomes.ProtocolError
        └── UpstreamProtocolError  production or the candidate sent something that is not a
                                   well-formed, unambiguous HTTP/1.1 response
    TimeoutError (OSError)
    └── UpstreamTimeout        production sent nothing for longer than its read timeout

The upstream errors derive from the builtin ``OSError`` family so that every failure of an
upstream call, ours or the socket's, is one ``except OSError``. They are not exceptions past
:func:`contract.outcomes.classify`, which maps them (and the socket's own errors) to an
:class:`~contract.outcomes.Outcome` and a short reason, and the pair records them.
"""

from __future__ import annotations

from contract.outcomes import ProtocolError

__all__ = ["ProxyError", "SpoolError", "UpstreamProtocolError", "UpstreamTimeout"]


class ProxyError(Exception):
    """Base class of the proxy's own errors."""


class SpoolError(ProxyError):
    """The spool directory is unusable (permissions, disk full, corrupt file)."""


class UpstreamProtocolError(ProtocolError):
    """The upstream sent something that is not a well-formed HTTP/1.1 response."""


class UpstreamTimeout(TimeoutError):
    """The upstream sent nothing for longer than the read timeout."""
