"""The contract between shadowtee's parts, by name: what the proxy writes, the comparator takes,
the model server and the replay agree on. Only the standard library: every part imports it.

Limits of a pair on the wire (``comparator.wire`` validates them; the proxy cuts to them):
request ids, model versions and content types, routes and error texts, segment dimensions and
values; the experiment-name pattern; ``HOST:PORT`` parsing; and the deterministic sampling
function, the same in the proxy's tee (which requests are teed) and in the comparator's retention
(which raw pairs are kept), so a key is picked alike everywhere and on every replay.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "ERROR_MAX",
    "EXPERIMENT_PATTERN",
    "MINTED_ABOVE",
    "REQUEST_ID_MAX",
    "ROUTE_MAX",
    "SEGMENT_DIMENSIONS_MAX",
    "SEGMENT_DIMENSION_PATTERN",
    "SEGMENT_VALUE_MAX",
    "VERSION_MAX",
    "WIRE_VERSION",
    "key_hash",
    "parse_host_port",
    "sample_threshold",
    "sampled",
]

WIRE_VERSION = 1

EXPERIMENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
REQUEST_ID_MAX = 200  # characters of a pair's request id
# A client's own request id longer than this is replaced by a minted one: the pair key adds
# "~" and 16 hex digits to it and must stay within REQUEST_ID_MAX.
MINTED_ABOVE = 180
VERSION_MAX = 200  # a model version or a content type
ROUTE_MAX = 2000  # a route or an error text
ERROR_MAX = 2000
SEGMENT_DIMENSION_PATTERN = r"^[a-z][a-z0-9_.-]{0,39}$"
SEGMENT_VALUE_MAX = 128
SEGMENT_DIMENSIONS_MAX = 8


def parse_host_port(value: str) -> tuple[str, int]:
    """Split ``"HOST:PORT"`` (``"[::1]:8080"`` for IPv6) into a host and a port 0–65535; an empty
    host is every interface."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def key_hash(key: str) -> int:
    """The first 8 bytes of BLAKE2b(``key``) as an integer in [0, 2**64)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def sample_threshold(rate: float) -> int:
    """The :func:`key_hash` bound below which a key is in the sample ``rate`` (0..1)."""
    return int(rate * 2**64)


def sampled(key: str, rate: float) -> bool:
    """Whether ``key`` is in the deterministic sample ``rate`` (stable across processes)."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return key_hash(key) < sample_threshold(rate)
