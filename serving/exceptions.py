"""Errors of the model server, each mapped to one HTTP status by the app's error middleware.

::

    ServingError
    ├── ModelLoadError        the model file or device cannot be used (start-up; one line, exit 2)
    ├── InvalidRequestError   400: malformed JSON or inputs that do not match the signature
    ├── ModelNotFoundError    404: a model name or version this server does not serve
    ├── NotReadyError         503: still loading or warming up
    ├── QueueFullError        503 + Retry-After: the batch queue is at ``max_queue``
    └── InferenceError        500: onnxruntime failed on inputs that passed validation
"""

from __future__ import annotations

__all__ = [
    "InferenceError",
    "InvalidRequestError",
    "ModelLoadError",
    "ModelNotFoundError",
    "NotReadyError",
    "QueueFullError",
    "ServingError",
]


class ServingError(Exception):
    """Base class; ``str()`` is the message sent to the client."""

    status = 500


class ModelLoadError(ServingError):
    """The model cannot be loaded on the requested device."""


class InvalidRequestError(ServingError):
    status = 400


class ModelNotFoundError(ServingError):
    status = 404


class NotReadyError(ServingError):
    status = 503


class QueueFullError(ServingError):
    status = 503


class InferenceError(ServingError):
    status = 500
