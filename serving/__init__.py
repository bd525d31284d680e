"""shadowtee serving: an ONNX Runtime model server that speaks the Open Inference Protocol v2.

``create_app(settings)`` builds the aiohttp application; ``run(settings)`` serves it until SIGTERM.
Modules: ``settings`` (ServeSettings), ``model`` (load, signature, provider), ``oip`` (request and
response bodies), ``batcher`` (dynamic batching), ``metrics``, ``app`` (routes), ``server`` (run).
The names below load lazily, so ``serving.settings`` can be checked without importing onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.app import create_app
    from serving.server import run, serve
    from serving.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "run", "serve"]

_HOMES = {"ServeSettings": "serving.settings", "create_app": "serving.app"}
_HOMES |= {"run": "serving.server", "serve": "serving.server"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
