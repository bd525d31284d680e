"""``shadowtee comparator --workers N``: N comparator processes on one socket and one database.

One Python process spends a core on validating, measuring and folding batches; the database's
share of a batch (the bulk load, the hourly rows) runs while it holds the experiment's lock. With
several processes, one measures its batch while another writes (``Ingest.prepare`` runs outside
the lock), so ingest grows with cores up to the database's own limit — as comparator replicas do
on PostgreSQL, but on one machine and on SQLite too.

::

    parent   migrate the database once; bind HOST:PORT; start the workers; wait
    worker i serve the whole comparator API on the shared socket (each new connection goes
             to the worker that accepts it first; one that answers a batch while it has
             another in hand closes that connection, so a busy worker sheds its senders'
             next batches to an idle one)
    worker 0 also the memory sampler, the periodic looks and retention, which N copies would
             repeat (N memory samples a scrape, N saved looks an interval)

The other workers fill their verdict gauges from the looks worker 0 saved
(``Looker.run(follow=True)``), so a scrape reads the same whichever worker answers. Counters and
histograms are shared through prometheus_client's multiprocess mode, so ``/metrics`` sums every
worker's ingest. SIGTERM or SIGINT to the parent stops the workers gracefully; a worker that dies
stops the rest and the parent exits 1, for the supervisor (systemd, Kubernetes) to restart the
whole.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from comparator.settings import ComparatorSettings
from comparator.store.store import Store
from contract import parse_host_port

__all__ = ["METRICS_DIR_ENV", "serve"]

log = logging.getLogger(__name__)

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is imported
STOP_GRACE_S = 20.0  # the workers' own shutdown timeout is 10 s


class _Stop(Exception):
    """Raised in the parent by SIGTERM or SIGINT."""


def _on_signal(signum: int, _frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


async def _migrate(url: str) -> None:

    await (await Store.open(url, upgrade=True)).close()


# (settings, socket to serve on, whether it runs the background role, metrics directory)
Worker = Callable[[ComparatorSettings, socket.socket, bool, str], object]


def _start_worker(
    worker: Worker,
    settings: ComparatorSettings,
    index: int,
    sock: socket.socket,
    metrics_dir: str,
    level: int,
) -> None:
    logging.basicConfig(
        level=level, format=f"%(asctime)s worker {index} %(levelname)s %(name)s: %(message)s"
    )
    worker(settings, sock, index == 0, metrics_dir)


def _listen(address: str) -> socket.socket:
    host, port = parse_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


def serve(settings: ComparatorSettings, worker: Worker) -> int:
    """Run ``settings.workers`` comparator processes until a signal or a worker's death; each
    runs ``worker`` (a module-level function, so that a spawned process can import it).

    Returns the exit status: 0 after a requested stop, 1 when a worker died on its own. Raises
    :class:`~comparator.exceptions.StoreError` (the database) and :class:`OSError` (the listen
    address) before any worker starts.
    """
    asyncio.run(_migrate(settings.db))  # once, so the workers do not race to create the schema
    sock = _listen(settings.listen)
    metrics_dir = tempfile.mkdtemp(prefix="shadowtee-comparator-metrics-")
    # Spawned workers import prometheus_client afresh and find the directory in their environment.
    os.environ[METRICS_DIR_ENV] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_start_worker,
            args=(worker, settings, i, sock, metrics_dir, logging.getLogger().getEffectiveLevel()),
            name=f"shadowtee-comparator-worker-{i}",
        )
        for i in range(settings.workers)
    ]
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for proc in procs:
            proc.start()
        log.info(
            "comparator: %d workers on %s (pids %s)",
            len(procs),
            settings.listen,
            ", ".join(str(p.pid) for p in procs),
        )
        dead = wait([p.sentinel for p in procs])
        for proc in procs:
            if proc.sentinel in dead:
                proc.join()  # reaped, so that its exit code is known
                log.error("comparator: %s exited with code %s", proc.name, proc.exitcode)
        status = 1
    except _Stop as stop:
        log.info("comparator: %s, stopping %d workers", stop, len(procs))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_all(procs)
        sock.close()
        os.environ.pop(METRICS_DIR_ENV, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _stop_all(procs: list[Any]) -> None:
    """SIGTERM every live worker, wait for them to drain, then SIGKILL what is left."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=STOP_GRACE_S)
        if proc.is_alive():
            log.warning("comparator: %s did not stop in %.0f s, killed", proc.name, STOP_GRACE_S)
            proc.kill()
            proc.join()
