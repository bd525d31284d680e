"""Golden-set replay: send a fixed set of requests to production and candidate, judge the pairs.

A replay is the gate before live shadowing: the same request bodies go to both models, each
answer becomes one side of a wire :class:`~comparator.wire.Pair`, and the pairs take exactly the
path live pairs take — :meth:`Store.ingest` (normalisation with ``measure``/``fold``) and then
:func:`~comparator.judge.verdict.judge`. Only the policy differs: a golden set is a few hundred
requests sent within seconds, not a 24 h window, so replay judges with a policy whose minimum
window is zero (:data:`REPLAY_POLICY`) and says so.

The request file is JSON Lines: one request body (a JSON object, e.g. an OIP v2 infer body) per
line; blank lines are skipped. A line of the form ``{"path": "/v2/models/m/infer", "body": {...}}``
sends ``body`` to ``path`` on the given base URLs instead.

Both sides are called with the same bytes, concurrently and with a bound on requests in flight;
a side's failure is data (an :class:`Outcome`), never an exception — except that a side that
cannot be reached at all on the first request stops the run with :class:`ReplayError`, since a
golden run against a wrong URL says nothing about the models.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from comparator.judge.decision import Verdict
from comparator.judge.policy import load_policy
from comparator.judge.verdict import judge
from comparator.measure.normalize import NormalizeConfig
from comparator.store.store import Store
from comparator.wire import Pair, RequestInfo, SideResult
from contract.outcomes import Outcome, classify

__all__ = [
    "REPLAY_POLICY",
    "ReplayError",
    "ReplayRequest",
    "ReplayResult",
    "build_pair",
    "check_url",
    "load_requests",
    "replay",
    "send_pairs",
]

# The policy a golden set is judged with: the 24 h window and the per-check minimum counts of the
# live policy would leave every replay at KEEP_OBSERVING, so this one waives them.
REPLAY_POLICY = Path(__file__).with_name("replay_policy.toml")

MAX_ERROR_CHARS = 300
# aiohttp's own exceptions, for contract.outcomes.classify: a connection that could not be made,
# and every other failed call.
_CONNECT = (aiohttp.ClientConnectorError, ConnectionRefusedError)
_FAILURES = (aiohttp.ClientError, OSError)


class ReplayError(Exception):
    """A replay that cannot run (bad file, bad URL, unreachable side); ``str()`` is one line."""


@dataclass(frozen=True)
class ReplayRequest:
    """One request of the golden set: where it goes (``path`` or the URL's own) and its bytes."""

    line: int
    path: str | None
    body: bytes
    parsed: Any


@dataclass(frozen=True)
class ReplayResult:
    experiment: str
    pairs: int
    verdict: Verdict


def check_url(option: str, url: str) -> str:
    """Return ``url`` without a trailing slash, or raise naming ``option`` if it is not http(s)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ReplayError(f"{option}: expected an http(s)://host[:port][/path] URL, got {url!r}")
    try:
        _ = parts.port
    except ValueError:
        raise ReplayError(f"{option}: bad port in {url!r}") from None
    return url.rstrip("/")


def load_requests(path: Path) -> list[ReplayRequest]:
    """Read the JSON Lines request file; errors name the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReplayError(f"--requests: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayError(f"--requests: cannot read {path}: {exc}") from None
    out: list[ReplayRequest] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ReplayError(f"--requests: {path}:{number}: not JSON: {exc.msg}") from None
        if not isinstance(doc, dict):
            raise ReplayError(f"--requests: {path}:{number}: expected a JSON object per line")
        route: str | None = None
        if set(doc) <= {"path", "body"} and "body" in doc:
            route = doc.get("path")
            if route is not None and (not isinstance(route, str) or not route.startswith("/")):
                raise ReplayError(f'--requests: {path}:{number}: "path" must start with /')
            doc = doc["body"]
        body = json.dumps(doc, separators=(",", ":")).encode()
        out.append(ReplayRequest(line=number, path=route, body=body, parsed=doc))
    if not out:
        raise ReplayError(f"--requests: {path} holds no requests")
    return out


def _target(base: str, request: ReplayRequest, option: str) -> str:
    parts = urlsplit(base)
    if request.path is not None:
        return f"{parts.scheme}://{parts.netloc}{request.path}"
    if parts.path in ("", "/"):
        raise ReplayError(
            f"{option}: {base!r} has no path and line {request.line} names none; "
            "give the full endpoint, e.g. http://host:port/v2/models/NAME/infer"
        )
    return base


def _side(
    outcome: Outcome,
    *,
    status: int | None = None,
    latency_ms: float | None = None,
    version: str | None = None,
    raw: bytes | None = None,
    error: str | None = None,
) -> SideResult:
    body: Any = None
    body_bytes: int | None = None
    if raw is not None:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body_bytes = len(raw)  # not JSON: the comparator counts it as an invalid output
    return SideResult(
        outcome=outcome,
        status=status,
        latency_ms=latency_ms,
        model_version=version,
        body=body,
        body_bytes=body_bytes,
        error=error[:MAX_ERROR_CHARS] if error else None,
    )


async def _call(
    session: aiohttp.ClientSession, url: str, body: bytes, timeout_s: float
) -> tuple[SideResult, BaseException | None]:
    """POST ``body``; return the side's result and the connection error, if there was one."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json", "X-Shadow": "1"}
            ) as resp:
                raw = await resp.read()
        elapsed = (time.perf_counter() - start) * 1000.0
        version = resp.headers.get("X-Model-Version")
        return _side(
            Outcome.OK, status=resp.status, latency_ms=elapsed, version=version, raw=raw
        ), None
    except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
        deadline = timeout_s * 1000.0
        outcome, reason = classify(exc, deadline, connect=_CONNECT, failures=_FAILURES)
        waited = deadline if outcome is Outcome.TIMEOUT else None
        side = _side(outcome, latency_ms=waited, error=reason)
        return side, exc if isinstance(exc, aiohttp.ClientConnectorError) else None


def build_pair(
    request: ReplayRequest,
    route: str,
    experiment: str,
    prod: SideResult,
    candidate: SideResult,
    *,
    include_request_body: bool,
    ts: datetime | None = None,
) -> Pair:
    """The wire pair of one replayed request, as the proxy would have shipped it."""
    return Pair(
        request_id=f"replay-{uuid.uuid4().hex}",
        experiment=experiment,
        ts=ts or datetime.now(UTC),
        route=route,
        request=RequestInfo(
            sha256=hashlib.sha256(request.body).hexdigest(),
            body=request.parsed if include_request_body else None,
        ),
        prod=prod,
        candidate=candidate,
    )


async def send_pairs(
    requests: Sequence[ReplayRequest],
    prod_url: str,
    cand_url: str,
    *,
    experiment: str,
    concurrency: int = 8,
    timeout_s: float = 10.0,
    include_request_body: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[Pair]:
    """Send every request to both sides (at most ``concurrency`` requests at a time)."""
    if concurrency < 1:
        raise ReplayError(f"--concurrency: must be at least 1, got {concurrency}")
    targets = [
        (_target(prod_url, r, "--prod"), _target(cand_url, r, "--candidate")) for r in requests
    ]
    pairs: list[Pair | None] = [None] * len(requests)
    done = 0
    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=True) as session:

        async def one(i: int) -> tuple[BaseException | None, BaseException | None]:
            nonlocal done
            request = requests[i]
            prod_target, cand_target = targets[i]
            async with limit:
                (prod, prod_exc), (cand, cand_exc) = await asyncio.gather(
                    _call(session, prod_target, request.body, timeout_s),
                    _call(session, cand_target, request.body, timeout_s),
                )
            pairs[i] = build_pair(
                request,
                urlsplit(prod_target).path,
                experiment,
                prod,
                cand,
                include_request_body=include_request_body,
            )
            done += 1
            if progress is not None:
                progress(done, len(requests))
            return prod_exc, cand_exc

        # The first request alone: a side nobody can reach is a usage error, not a verdict.
        prod_exc, cand_exc = await one(0)
        if prod_exc is not None:
            raise ReplayError(f"--prod: cannot reach {prod_url}: {prod_exc}")
        if cand_exc is not None:
            raise ReplayError(f"--candidate: cannot reach {cand_url}: {cand_exc}")
        await asyncio.gather(*(one(i) for i in range(1, len(requests))))
    return [p for p in pairs if p is not None]


async def replay(
    requests: Sequence[ReplayRequest],
    prod_url: str,
    cand_url: str,
    *,
    db_url: str,
    experiment: str,
    policy_path: Path | None = None,
    concurrency: int = 8,
    timeout_s: float = 10.0,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Send, store through :meth:`Store.ingest` and judge; returns the verdict (saved in the DB)."""

    policy = load_policy(policy_path or REPLAY_POLICY)
    # Latency is read with the policy's warm-up (zero for a golden set), as the comparator does.
    config = NormalizeConfig(warmup_minutes=policy.window.warmup_minutes)
    pairs = await send_pairs(
        requests,
        prod_url,
        cand_url,
        experiment=experiment,
        concurrency=concurrency,
        timeout_s=timeout_s,
        progress=progress,
    )
    store = await Store.open(db_url, normalize_config=lambda _name: config, store_bodies=True)
    try:
        await store.ingest(pairs)
        verdict = await judge(store, experiment, policy)
    finally:
        await store.close()
    return ReplayResult(experiment=experiment, pairs=len(pairs), verdict=verdict)
