"""The data port's running state: every resource built whole, each closing on one exit stack.

:func:`build` makes the production pool, the comparator session and shipper, the pairing buffer
and the tee, registering each one's closing on an :class:`~contextlib.AsyncExitStack` as it is
made; :func:`start_tasks` starts the shipper and the pair reaper and registers the shutdown
steps, so that closing the stack runs them in reverse order: stop teeing and drain the in-flight
tees (bounded), stop the reaper, close every open pair, flush the pairs to the comparator (or
the spool), then close the pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry

from proxy.metrics import ProxyCollector, ProxyStats
from proxy.pair_json import segment_extractor
from proxy.pairing import PairingBuffer
from proxy.settings import ProxySettings
from proxy.shipper import Shipper
from proxy.spool import Spool
from proxy.tee import Tee
from proxy.tee_rules import TeeRules
from proxy.upstream import CandidateClient, ProductionClient

__all__ = ["INLINE_MAX_BYTES", "ProxyState", "build", "start_tasks"]

log = logging.getLogger("shadowtee.proxy")

# Responses up to this size (with a Content-Length) are read whole and sent in one write; larger or
# unsized ones are streamed chunk by chunk so memory stays flat for multi-MiB bodies.
INLINE_MAX_BYTES = 1024 * 1024
_REAP_INTERVAL_S = 0.1


@dataclass
class ProxyState:
    """Everything the handler and the admin port read, built whole by :class:`DataPort`."""

    settings: ProxySettings
    stats: ProxyStats
    registry: CollectorRegistry
    prod: ProductionClient
    shipper: Shipper
    pairing: PairingBuffer
    tee: Tee
    rules: TeeRules  # the live tee control changes its sample rate
    draining: bool = False

    def gauges(self) -> dict[str, float]:
        """The live gauges, read now: one source for ``/metrics`` and ``/admin/status``."""
        spool = self.shipper.spool
        return {
            "tee_inflight": self.tee.inflight,
            "tee_max_inflight": self.settings.max_inflight,
            "tee_held_bytes": self.tee.held_bytes,
            "pairing_buffer_pairs": len(self.pairing),
            "ship_queue_pairs": self.shipper.queued,
            "ship_queue_bytes": self.shipper.queued_bytes,
            "spool_batches": len(spool),
            "spool_pairs": spool.pairs,
            "spool_bytes": spool.bytes,
        }


def build(
    settings: ProxySettings, registry: CollectorRegistry | None, exits: contextlib.AsyncExitStack
) -> ProxyState:
    """Every resource of the data port, each one's closing registered on ``exits``."""
    s = settings
    stats = ProxyStats()
    prod = ProductionClient(
        s.prod,
        limit=s.prod_pool_size,
        timeout_s=s.prod_timeout_s,
        inline_bytes=INLINE_MAX_BYTES,
    )
    exits.push_async_callback(prod.close)
    ship_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=4, keepalive_timeout=30),
        timeout=aiohttp.ClientTimeout(total=s.ship_timeout_ms / 1000.0),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    exits.push_async_callback(ship_session.close)
    if s.comparator is None:
        log.warning("no --comparator: pairs are counted as dropped (reason no_comparator)")
    shipper = Shipper(
        session=ship_session,
        comparator_url=list(s.comparator_urls) or None,
        token=s.comparator_token.get_secret_value() if s.comparator_token else None,
        experiment=s.experiment,
        spool=Spool(s.spool_dir, s.max_spool_bytes),
        stats=stats,
        batch_size=s.batch_size,
        flush_interval_s=s.flush_interval_ms / 1000.0,
        timeout_s=s.ship_timeout_ms / 1000.0,
        retries=s.ship_retries,
        backoff_s=s.retry_backoff_ms / 1000.0,
        max_queue=s.ship_queue_max_pairs,
        max_queue_bytes=s.ship_queue_max_bytes,
        max_body_bytes=s.max_pair_body_bytes,
        max_batch_bytes=s.max_batch_bytes,
        poison_after=s.ship_poison_after,
    )
    pairing = PairingBuffer(
        max_pairs=s.buffer_max_pairs,
        on_emit=shipper.enqueue,
        candidate_deadline_ms=s.shadow_timeout_ms,
        keep_request_body=s.include_request_body,
        segments=segment_extractor(s.segment_route, s.segment_pointers),
        segment_versions=s.segment_model_versions,
    )
    tee = Tee(
        client=CandidateClient(
            s.candidate,
            linger_s=s.candidate_linger_ms / 1000.0,
            max_body_bytes=s.client_max_size,
            # Only a pair's worth of the candidate's answer is held; the rest is counted.
            keep_bytes=s.max_pair_body_bytes,
        ),
        deadline_s=s.shadow_timeout_s,
        max_inflight=s.max_inflight,
        max_body_bytes=s.max_tee_body_bytes,
        max_bytes=s.max_tee_bytes,
        redact=s.redact_headers,
        forward_auth=s.forward_auth_to_candidate,
        pairing=pairing,
        stats=stats,
        # A pair waits for the slower of the two sides, plus a margin for the event loop.
        pair_ttl_s=max(s.shadow_timeout_s, s.prod_timeout_s) + 1.0,
        segment_headers=s.segment_headers,
    )
    state = ProxyState(
        settings=settings,
        stats=stats,
        registry=registry or CollectorRegistry(),
        prod=prod,
        shipper=shipper,
        pairing=pairing,
        tee=tee,
        rules=TeeRules(s.tee_routes, s.tee_methods, s.sample_rate),
    )
    state.registry.register(ProxyCollector(stats, state.gauges))
    return state


def start_tasks(state: ProxyState, exits: contextlib.AsyncExitStack) -> None:
    """Start the shipper and the pair reaper; register the shutdown steps on ``exits``."""
    shipper = asyncio.create_task(state.shipper.run(), name="shadowtee-shipper")
    exits.push_async_callback(_stop_shipping, state.shipper, shipper)
    exits.callback(lambda: state.pairing.drain(time.monotonic()))
    reaper = asyncio.create_task(_reap(state.pairing), name="shadowtee-pair-reaper")
    exits.push_async_callback(_cancel, reaper)
    exits.push_async_callback(_stop_teeing, state.tee, state.settings.tee_grace_ms / 1000.0)


async def _stop_teeing(tee: Tee, grace_s: float) -> None:
    cancelled = await tee.drain(grace_s)
    if cancelled:
        log.warning(
            "shutdown: cancelled %d candidate calls still running after the grace", cancelled
        )
    await tee.close()


async def _stop_shipping(shipper: Shipper, task: asyncio.Task[None]) -> None:
    await shipper.close()
    await task


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _reap(pairing: PairingBuffer) -> None:
    while True:
        await asyncio.sleep(_REAP_INTERVAL_S)
        pairing.expire(time.monotonic())
