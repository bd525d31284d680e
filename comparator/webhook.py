"""Tell automation when a verdict's decision changes: a signed JSON POST, retried with backoff.

The body is the JSON of the event; the receiver authenticates it with the shared secret::

    X-Shadowtee-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>
    X-Shadowtee-Delivery:  <uuid, the same on every retry of one event, for de-duplication>

A 2xx ends the delivery. A 5xx, 408, 429 or a connection error is retried after ``backoff_s``,
doubling each time, up to ``attempts`` tries; any other 4xx is final (retrying cannot fix it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = [
    "SIGNATURE_HEADER",
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
        if self.attempts < 1:
            raise ValueError("webhook attempts: must be ≥ 1")


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    attempts: int
    status: int | None
    delivery_id: str


def sign(body: bytes, secret: bytes) -> str:
    """The signature header value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: bytes, header: str | None) -> bool:
    """Constant-time check of a received signature header (for receivers and tests)."""
    return header is not None and hmac.compare_digest(sign(body, secret), header)


async def post_event(
    session: aiohttp.ClientSession, config: WebhookConfig, event: dict[str, Any]
) -> Delivery:
    """POST ``event`` as signed JSON, retrying transient failures; never raises for HTTP errors."""
    body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
    delivery_id = str(uuid.uuid4())
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(body, config.secret),
        DELIVERY_HEADER: delivery_id,
    }
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    status: int | None = None
    for attempt in range(1, config.attempts + 1):
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
