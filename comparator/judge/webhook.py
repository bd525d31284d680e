"""Tell automation when a verdict's decision changes: a signed JSON POST, retried with backoff.

The body is the JSON of the event; the receiver authenticates it with the shared secret, in the
scheme Stripe uses::

    X-Shadowtee-Signature: t=<unix seconds when signed>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>
    X-Shadowtee-Delivery:  <uuid, the same on every retry of one event, for de-duplication>

The timestamp is signed with the body, so a captured request cannot be replayed later: a receiver
recomputes the HMAC over ``t``, a dot and the raw body, compares it in constant time, and refuses a
``t`` more than a few minutes from its own clock (:func:`verify`, ``tolerance_s`` 300 by default).
Every attempt is signed afresh. A header may carry several ``v1=`` values (a secret being rotated);
one match is enough.

A 2xx ends the delivery. A 5xx, 408, 429 or a connection error is retried after ``backoff_s``,
doubling each time, up to ``attempts`` tries; any other 4xx is final (retrying cannot fix it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = [
    "SIGNATURE_HEADER",
    "TOLERANCE_S",
    "Delivery",
    "WebhookConfig",
    "notify_decision",
    "post_event",
    "sign",
    "verify",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Shadowtee-Signature"
DELIVERY_HEADER = "X-Shadowtee-Delivery"
TOLERANCE_S = 300.0
_RETRYABLE = {408, 429}


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: bytes
    attempts: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url: must be http(s)://…, got {self.url!r}")
        if not self.secret:
            raise ValueError("webhook secret: must not be empty (events must be signed)")
        if self.attempts < 1:
            raise ValueError("webhook attempts: must be ≥ 1")


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    attempts: int
    status: int | None
    delivery_id: str


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: bytes, timestamp: int | None = None) -> str:
    """The signature header value for ``body`` signed at ``timestamp`` (default: now)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(secret, t, body)}"


def verify(
    body: bytes,
    secret: bytes,
    header: str | None,
    *,
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Check a received signature header: the HMAC of ``t.body`` matches (constant time) and
    ``t`` is within ``tolerance_s`` of ``now`` (default: this machine's clock)."""
    if not header or not secret:
        return False
    timestamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not value.isdigit() or len(value) > 12:
                return False
            timestamp = int(value)
        elif key == "v1":
            macs.append(value)
    if timestamp is None or not macs:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, timestamp, body)
    # every candidate is compared, so the time taken does not tell which one matched
    return sum(hmac.compare_digest(expected, m) for m in macs) > 0


async def post_event(
    session: aiohttp.ClientSession, config: WebhookConfig, event: dict[str, Any]
) -> Delivery:
    """POST ``event`` as signed JSON, retrying transient failures; never raises for HTTP errors."""
    body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
    delivery_id = str(uuid.uuid4())
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    status: int | None = None
    for attempt in range(1, config.attempts + 1):
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(body, config.secret),  # a fresh timestamp on every attempt
            DELIVERY_HEADER: delivery_id,
        }
        try:
            async with session.post(
                config.url, data=body, headers=headers, timeout=timeout
            ) as resp:
                status = resp.status
                await resp.read()
            if 200 <= status < 300:
                return Delivery(True, attempt, status, delivery_id)
            if status < 500 and status not in _RETRYABLE:
                log.warning(
                    "webhook %s refused the event with %d; not retrying", config.url, status
                )
                return Delivery(False, attempt, status, delivery_id)
            why = f"status {status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, why = None, type(exc).__name__
        if attempt < config.attempts:
            delay = config.backoff_s * 2 ** (attempt - 1)
            log.info(
                "webhook attempt %d/%d failed (%s); retrying in %.2fs",
                attempt,
                config.attempts,
                why,
                delay,
            )
            await asyncio.sleep(delay)
    log.error("webhook %s: gave up after %d attempts", config.url, config.attempts)
    return Delivery(False, config.attempts, status, delivery_id)


async def notify_decision(
    session: aiohttp.ClientSession,
    config: WebhookConfig,
    verdict: Any,
    *,
    previous: str | None = None,
) -> Delivery | None:
    """Post a ``decision_changed`` event when ``verdict.decision_changed``; otherwise do nothing."""
    if not verdict.decision_changed:
        return None
    payload = verdict.to_json()
    event = {
        "event": "decision_changed",
        "experiment": payload["experiment"],
        "decision": payload["decision"],
        "previous": previous,
        "at": payload["at"],
        "verdict": payload,
    }
    return await post_event(session, config, event)
