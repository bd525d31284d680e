"""The OIP v2 HTTP surface of ``shadowtee serve`` (DESIGN §4, serving).

Routes: ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2`` (server metadata),
``/v2/models/{name}[/versions/{version}]`` (model metadata), ``.../ready``,
``POST .../infer``, and ``GET /metrics``. Every response -- errors and 404s included -- carries
``X-Model-Name``, ``X-Model-Version`` and ``X-Model-Sha256`` (of the ONNX file), so a caller, or the
proxy recording a pair, always knows which model answered.

Life cycle, one cleanup context per resource: the model is loaded during start-up (a load error,
such as ``--device cuda`` on a machine without one, stops start-up); the server then accepts
connections and reports *live* at once, but *ready* -- and infer -- only after ``warmup_runs``
inferences have run on the inference thread, so the first real request does not pay for
onnxruntime's lazy initialisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from serving.batcher import Batcher
from serving.exceptions import (
    ModelLoadError,
    ModelNotFoundError,
    NotReadyError,
    QueueFullError,
    ServingError,
)
from serving.metrics import ServingMetrics
from serving.model import LoadedModel, load_model
from serving.oip import encode_response, parse_infer_request
from serving.registry import RegistryRef, resolve
from serving.settings import ServeSettings

__all__ = ["METRICS", "SETTINGS", "STATE", "ServingState", "create_app"]

log = logging.getLogger(__name__)


@dataclass
class Served:
    """A model and the batcher that feeds it; replaced as a whole, never mutated."""

    model: LoadedModel
    batcher: Batcher


@dataclass
class ServingState:
    current: Served | None = None
    ready: bool = False


SETTINGS = web.AppKey("settings", ServeSettings)
STATE = web.AppKey("state", ServingState)
METRICS = web.AppKey("metrics", ServingMetrics)
BEFORE_READY = web.AppKey("before_ready", object)
SERVED = web.RequestKey("served", Served)

_JSON = "application/json"


def _server_version() -> str:
    try:
        return metadata.version("shadowtee")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(doc).encode(), status=status, content_type=_JSON, headers=headers
    )


def _served(request: web.Request, *, need_ready: bool = True) -> Served:
    """The model named by the path, or 404; 503 before warm-up when ``need_ready``."""
    state = request.app[STATE]
    served = state.current
    name = request.match_info.get("name")
    version = request.match_info.get("version")
    if served is None:
        raise NotReadyError("model is loading")
    if name is not None and name != served.model.name:
        raise ModelNotFoundError(
            f"unknown model {name!r}; this server serves {served.model.name!r}"
        )
    if version is not None and version != served.model.version:
        raise ModelNotFoundError(
            f"model {name!r} has no version {version!r}; serving version {served.model.version!r}"
        )
    if need_ready and not state.ready:
        raise NotReadyError("model is warming up")
    request[SERVED] = served  # identity headers name the model that answered
    return served


def _make_run(model: LoadedModel, metrics: ServingMetrics) -> Callable[..., dict[str, np.ndarray]]:
    names = model.output_names

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = dict(zip(names, model.run(feeds), strict=True))
        for name, arr in outputs.items():
            metrics.health.observe(name, arr)
        return outputs

    return run


# --- handlers -------------------------------------------------------------------------------


async def live(request: web.Request) -> web.Response:
    return _json({"live": True})


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json({"ready": state.ready}, status=200 if state.ready else 503)


async def server_metadata(request: web.Request) -> web.Response:
    # binary_tensor_data: the binary tensor extension, both ways (serving.oip).
    return _json(
        {"name": "shadowtee", "version": _server_version(), "extensions": ["binary_tensor_data"]}
    )


async def model_metadata(request: web.Request) -> web.Response:
    model = _served(request, need_ready=False).model
    sig = model.signature
    return _json(
        {
            "name": model.name,
            "versions": [model.version],
            "platform": "onnxruntime_onnx",
            "inputs": [s.to_json() for s in sig.inputs],
            "outputs": [s.to_json() for s in sig.outputs],
            "parameters": {
                "sha256": model.sha256,
                "provider": model.provider,
                "device": model.device,
                "provider_reason": model.provider_reason,
            },
        }
    )


async def model_ready(request: web.Request) -> web.Response:
    _served(request, need_ready=False)
    state = request.app[STATE]
    return _json({"ready": state.ready}, status=200 if state.ready else 503)


async def infer(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    start = time.perf_counter()
    status = 500
    try:
        served = _served(request)
        model = served.model
        served.batcher.announce()
        try:
            body = await request.read()
            req = parse_infer_request(
                body,
                model.signature,
                model.output_names,
                request.headers.get("Inference-Header-Content-Length"),
            )
        finally:
            served.batcher.withdraw()
        outputs = await served.batcher.submit(req.feeds, req.rows)
        payload, header_length = encode_response(
            model_name=model.name,
            model_version=model.version,
            request_id=req.id,
            outputs=outputs,
            specs=model.output_specs,
            wanted=req.outputs,
            binary=req.binary_outputs,
        )
        status = 200
        if header_length is None:
            return web.Response(body=payload, content_type=_JSON)
        return web.Response(
            body=payload,
            content_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(header_length)},
        )
    except (ServingError, web.HTTPException) as exc:
        status = exc.status
        raise
    finally:
        metrics.count(status)
        metrics.request_seconds.observe(time.perf_counter() - start)


# --- middleware and signals ------------------------------------------------------------------


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServingError as exc:
        headers = None
        if isinstance(exc, QueueFullError):
            headers = {"Retry-After": str(request.app[SETTINGS].retry_after_s)}
        return _json({"error": str(exc)}, status=exc.status, headers=headers)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _json({"error": "internal server error"}, status=500)


async def _identity(request: web.Request, response: web.StreamResponse) -> None:
    served = request.get(SERVED) or request.app[STATE].current
    if served is not None:
        response.headers["X-Model-Name"] = served.model.name
        response.headers["X-Model-Version"] = served.model.version
        response.headers["X-Model-Sha256"] = served.model.sha256


# --- life cycle ------------------------------------------------------------------------------


def _load(settings: ServeSettings, path: Path, version: str) -> LoadedModel:
    return load_model(
        path,
        name=settings.model_name,
        version=version,
        device=settings.device,
        gpu_mem_limit_bytes=settings.gpu_mem_limit_bytes,
        intra_op_threads=settings.intra_op_threads,
        spin=settings.intra_op_spinning,
    )


def _serve(app: web.Application, model: LoadedModel) -> Served:
    settings = app[SETTINGS]
    batcher = Batcher(
        _make_run(model, app[METRICS]),
        max_batch=settings.max_batch,
        max_delay_s=settings.max_delay_ms / 1000.0,
        max_queue=settings.max_queue,
        metrics=app[METRICS],
        batchable=model.signature.batched,
    )
    batcher.start()
    return Served(model, batcher)


async def _warm(app: web.Application, served: Served) -> None:
    loop = asyncio.get_running_loop()
    feeds = served.model.warmup_feeds()
    for _ in range(app[SETTINGS].warmup_runs):
        await loop.run_in_executor(served.batcher.executor, served.model.run, feeds)
        app[METRICS].warmup_runs.inc()


async def _warm_then_ready(app: web.Application, served: Served) -> None:
    await _warm(app, served)
    hook = app[BEFORE_READY]
    if callable(hook):
        await hook()
    app[STATE].ready = True
    log.info("ready: %s version %s", served.model.name, served.model.version)
    ref = app[SETTINGS].registry
    if ref is not None:
        await _follow_alias(app, ref)


async def _follow_alias(app: web.Application, ref: RegistryRef) -> None:
    """Blue/green: when the alias moves, load and warm the new version, swap, drain the old one."""
    state = app[STATE]
    loop = asyncio.get_running_loop()
    period = app[SETTINGS].registry_poll_ms / 1000.0
    last_error = ""
    while True:
        await asyncio.sleep(period)
        old = state.current
        assert old is not None
        try:
            version, path = resolve(ref)
            if version == old.model.version:
                last_error = ""
                continue
            log.info("alias %s moved: %s -> %s; loading", ref, old.model.version, version)
            model = await loop.run_in_executor(None, _load, app[SETTINGS], path, version)
        except ModelLoadError as exc:
            if str(exc) != last_error:  # say it once, keep serving the old version
                log.error("registry: %s; still serving version %s", exc, old.model.version)
                last_error = str(exc)
            continue
        new = _serve(app, model)
        try:
            await _warm(app, new)
        except Exception:
            await new.batcher.close()
            raise
        state.current = new  # one assignment: every later request sees the new version
        log.info("serving %s version %s (sha256 %s)", model.name, version, model.sha256[:12])
        await old.batcher.drain()
        await old.batcher.close()


async def _model_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    ref = settings.registry
    if ref is not None:
        version, path = resolve(ref)
    else:
        version, path = settings.version or "1", Path(settings.model)
    loop = asyncio.get_running_loop()
    model = await loop.run_in_executor(None, _load, settings, path, version)
    served = app[STATE].current = _serve(app, model)
    task = loop.create_task(_warm_then_ready(app, served), name="warm-up")
    yield
    app[STATE].ready = False
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    current = app[STATE].current
    if current is not None:
        await current.batcher.close()


def create_app(
    settings: ServeSettings,
    registry: CollectorRegistry | None = None,
    *,
    before_ready: Callable[[], Awaitable[None]] | None = None,
) -> web.Application:
    """Build the serving app; ``before_ready`` runs after warm-up, before ready flips (tests)."""
    app = web.Application(middlewares=[_errors], client_max_size=settings.client_max_size)
    state = ServingState()
    app[SETTINGS] = settings
    app[STATE] = state
    app[BEFORE_READY] = before_ready
    metrics = ServingMetrics(registry if registry is not None else CollectorRegistry())
    metrics.bind_state(
        lambda: {
            "queue_depth": state.current.batcher.depth if state.current else 0,
            "ready": state.ready,
            "model": state.current.model if state.current else None,
        }
    )
    app[METRICS] = metrics
    app.cleanup_ctx.append(_model_ctx)
    app.on_response_prepare.append(_identity)
    r = app.router
    # Infer first: the router tries resources in order, and infer is what runs at load.
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        r.add_post(prefix + "/infer", infer)
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    r.add_get("/v2", server_metadata)
    # prometheus-client's handler: text or OpenMetrics as the scraper asks, gzip when accepted.
    r.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        r.add_get(prefix, model_metadata)
        r.add_get(prefix + "/ready", model_ready)
    return app
