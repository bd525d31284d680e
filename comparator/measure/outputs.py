"""Read the compared output out of one response body, and tell which task a batch of outputs is.

Pure functions of JSON values: no I/O, no numpy state, no clock. :mod:`comparator.measure.normalize` stacks
what :func:`read_output` returns and measures the pairs.

Reading an output (first match wins):

* a configured JSON pointer (RFC 6901), e.g. ``/outputs/0/data`` or ``/result/scores``; it may point
  at a plain (nested) list or at an OIP v2 tensor ``{"shape": [...], "data": [...]}``;
* OIP v2 ``outputs[]``: the output named like ``probabilities``/``probs``/``scores``/``logits``
  when there is one, else the first output that is not a label, else the label; ``data`` is laid
  out by ``shape`` (their sizes must agree);
* v1 ``predictions``: a list with one entry per instance — a number, a list, or a dict (from which
  the probability-like key, else the first numeric key, is read). A bare top-level list reads the same.

A body in the OIP binary tensor extension (a JSON header, then the raw little-endian tensors of the
entries with ``parameters.binary_data_size``, in order) is first turned into the JSON it stands for
by :func:`decode_binary`: every datatype the protocol has as JSON (BOOL, UINT8–64, INT8–64, FP16,
FP32, FP64, BYTES) gets its ``data``, and is then read as above.

Layout (:func:`layout`): an output is ``rows × width``. A 0-d output is 1 × 1; a 1-d output of
length n is one row of n numbers (``[K]`` probabilities) except for regression, where it is n rows of
one number; a 2-d or higher output is ``shape[0]`` rows of the remaining numbers flattened.

Task (:func:`infer_task`, when the configured task is ``"auto"``; the most common signature among
the first valid production outputs decides for the batch, else the candidate's):

* an output named like logits, or a probability-like vector (≥ 0, rows sum to 1) → classification;
  an integer output named like a label with one value per row → classification by label (no JS);
* one number per row → regression; a list of integers → ranking; any other float vector → embedding.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections import Counter
from typing import Any, NamedTuple

import numpy as np

from comparator.measure.divergence import on_simplex

__all__ = [
    "TASKS",
    "Layout",
    "Output",
    "infer_task",
    "is_label",
    "is_logits",
    "layout",
    "read_output",
    "read_outputs",
]

TASKS = ("classification", "regression", "embedding", "ranking")
_PROBS_NAME = re.compile(r"prob|score|logit|softmax", re.IGNORECASE)
_LOGITS_NAME = re.compile(r"logit", re.IGNORECASE)
_LABEL_NAME = re.compile(r"label|class|predict", re.IGNORECASE)
_INFER_SAMPLE = 32  # valid production outputs looked at to infer the batch's task

Layout = tuple[int, int]  # (rows, width)


class Output(NamedTuple):
    """One output read from a body, before it is stacked and validated."""

    flat: list[Any]  # row-major numbers, validated when the batch is stacked
    shape: tuple[int, ...]  # as declared; v1 lists of numbers are (n, 1)
    name: str
    integer: bool  # every value an int (ids, labels)


@functools.lru_cache(maxsize=4096)
def _name_kind(name: str) -> int:
    """Preference of an output name: 0 probability-like, 1 anything else, 2 label-like (cached:
    names repeat every pair)."""
    if _PROBS_NAME.search(name):
        return 0
    return 2 if _LABEL_NAME.search(name) else 1


def _resolve_pointer(doc: Any, pointer: str) -> Any:
    """RFC 6901: ``~1`` is ``/`` and ``~0`` is ``~``; a missing step raises LookupError."""
    if pointer == "":
        return doc
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(doc, list):
            if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
                raise LookupError(token)
            doc = doc[int(token)]
        elif isinstance(doc, dict):
            doc = doc[token]
        else:
            raise LookupError(token)
    return doc


def _is_int(values: list[Any]) -> bool:
    return bool(values) and type(values[0]) is int and all(type(v) is int for v in values)


def _from_nested(value: Any, name: str) -> Output | None:
    """A (nested) list or a number; ragged or non-numeric content is None (invalid)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return Output([value], (), name, type(value) is int)
    if not isinstance(value, list) or not value:
        return None
    if not isinstance(value[0], list):
        return Output(value, (len(value),), name, _is_int(value))
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged
        return None
    if arr.dtype == object or arr.size == 0:
        return None
    flat = arr.ravel().tolist()
    return Output(flat, arr.shape, name, arr.dtype.kind in "iu")


def _from_tensor(tensor: Any) -> Output | None:
    """An OIP v2 output tensor ``{"name", "shape", "datatype", "data"}``."""
    if not isinstance(tensor, dict):
        return None
    name = str(tensor.get("name", ""))
    data, shape = tensor.get("data"), tensor.get("shape")
    if not isinstance(data, list) or not data:
        return None
    if isinstance(data[0], list):  # some servers nest `data` like the tensor
        out = _from_nested(data, name)
        if out is None:
            return None
        data = out.flat
    if isinstance(shape, list):
        dims = tuple(shape)
        try:
            size = shape_size(dims)
        except TypeError:  # an unhashable dimension
            size = -1
        if size >= 0:
            return Output(data, dims, name, _is_int(data)) if size == len(data) else None
    return _from_nested(data, name)


@functools.lru_cache(maxsize=1024)
def shape_size(dims: tuple[Any, ...]) -> int:
    """Element count of a declared shape, −1 when it is not a list of counts (cached: repeats)."""
    if all(type(d) is int and d >= 0 for d in dims):
        return math.prod(dims)
    return -1


def _pick_v2(outputs: list[Any]) -> Any:
    """The probability-like output, else the first that is not a label, else the first."""
    if len(outputs) == 1:  # the common case: the one output, when it is a tensor
        return outputs[0] if isinstance(outputs[0], dict) else None
    best, best_kind = None, 3
    for o in outputs:
        if isinstance(o, dict):
            kind = _name_kind(str(o.get("name", "")))
            if kind == 0:
                return o
            if kind < best_kind:
                best, best_kind = o, kind
    return best


def _from_v1(predictions: list[Any]) -> Output | None:
    if not predictions:
        return None
    first = predictions[0]
    if isinstance(first, dict):
        name = next((k for k in first if _PROBS_NAME.search(k)), None)
        if name is None:
            name = next((k for k, v in first.items() if isinstance(v, int | float | list)), None)
        if name is None or not all(isinstance(p, dict) and name in p for p in predictions):
            return None
        predictions = [p[name] for p in predictions]
    else:
        name = "predictions"
    if isinstance(predictions[0], list):
        return _from_nested(predictions, name)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in predictions):
        return Output(predictions, (len(predictions), 1), name, _is_int(predictions))
    return None


def read_output(body: Any, pointer: str | None = None) -> Output | None:
    """The compared output of one response body, or None when there is none to read."""
    if body is None:
        return None
    if pointer is not None:
        try:
            target = _resolve_pointer(body, pointer)
        except (LookupError, IndexError):
            return None
        if isinstance(target, dict):
            return _from_tensor(target)
        return _from_nested(target, pointer.rsplit("/", 1)[-1])
    if isinstance(body, dict):
        outputs = body.get("outputs")
        if isinstance(outputs, list):
            return _from_tensor(_pick_v2(outputs))
        predictions = body.get("predictions")
        if isinstance(predictions, list):
            return _from_v1(predictions)
        return None
    if isinstance(body, list):
        return _from_v1(body)
    return None


def read_outputs(bodies: list[Any], pointer: str | None = None) -> list[Output | None]:
    """:func:`read_output` of each body, with the common shape read inline.

    Most bodies of a batch are OIP v2 answers with one tensor of floats, ``{"outputs": [{"name",
    "shape", "data": [0.1, …]}]}``: those are read here without the calls :func:`_from_tensor`
    makes, and give the same :class:`Output`; anything else goes through :func:`read_output`.
    """
    if pointer is not None:
        return [read_output(b, pointer) for b in bodies]
    out: list[Output | None] = []
    append = out.append
    for body in bodies:
        if type(body) is dict:
            outputs = body.get("outputs")
            if type(outputs) is list and len(outputs) == 1:
                tensor = outputs[0]
                if type(tensor) is dict:
                    data, shape = tensor.get("data"), tensor.get("shape")
                    if (
                        type(data) is list
                        and data
                        and type(data[0]) is float
                        and type(shape) is list
                    ):
                        dims = tuple(shape)
                        try:
                            size = shape_size(dims)
                        except TypeError:
                            size = -1
                        if size >= 0:
                            name = tensor.get("name", "")
                            name = name if type(name) is str else str(name)
                            # _is_int(data) is False: its first value is a float.
                            append(Output(data, dims, name, False) if size == len(data) else None)
                            continue
        append(read_output(body))
    return out


def layout(shape: tuple[int, ...], task: str) -> Layout:
    """(rows, width) of a declared shape for ``task`` (module docstring: 1-d is one row, except
    for regression)."""
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (shape[0], 1) if task == "regression" else (1, shape[0])
    return (shape[0], math.prod(shape[1:]))


def _signature(out: Output, simplex_tol: float) -> str:
    """The task an output looks like (module docstring), from production's side."""
    rows, width = layout(out.shape, "auto")
    if _LOGITS_NAME.search(out.name):
        return "classification"
    if out.integer:
        if width == 1 and _LABEL_NAME.search(out.name):
            return "classification"
        return "ranking" if width > 1 else "regression"
    if width == 1:
        return "regression"
    try:
        arr = np.asarray(out.flat, dtype=np.float64).reshape(rows, width)
    except (TypeError, ValueError, OverflowError):
        return "unknown"
    if np.isfinite(arr).all() and on_simplex(arr, simplex_tol).all():
        return "classification"
    return "embedding"


def _signatures(outs: list[Output], simplex_tol: float) -> list[str]:
    """:func:`_signature` of each output, the float vectors of one layout judged in one array."""
    sigs: list[str] = []
    vectors: dict[Layout, list[int]] = {}
    for i, out in enumerate(outs):
        rows, width = layout(out.shape, "auto")
        if width == 1 or out.integer or _LOGITS_NAME.search(out.name):  # decided without values
            sigs.append(_signature(out, simplex_tol))
        else:
            sigs.append("")
            vectors.setdefault((rows, width), []).append(i)
    for (rows, width), idx in vectors.items():
        try:
            arr = np.array([outs[i].flat for i in idx], dtype=np.float64)
            arr = arr.reshape(len(idx), rows, width)
        except (TypeError, ValueError, OverflowError):  # one bad output: judge each alone
            for i in idx:
                sigs[i] = _signature(outs[i], simplex_tol)
            continue
        finite = np.isfinite(arr).all(axis=(1, 2))
        simplex = np.asarray(finite & on_simplex(arr, simplex_tol).all(axis=1), dtype=bool)
        for i, yes in zip(idx, simplex.tolist(), strict=True):
            sigs[i] = "classification" if yes else "embedding"
    return sigs


def is_label(out: Output) -> bool:
    """An integer output named like a label with one value per row: the class itself."""
    return (
        out.integer
        and layout(out.shape, "classification")[1] == 1
        and bool(_LABEL_NAME.search(out.name))
    )


def is_logits(out: Output) -> bool:
    """The output is named like logits (soft-maxed before it is compared)."""
    return bool(_LOGITS_NAME.search(out.name))


def infer_task(
    prod: list[Output | None], cand: list[Output | None], task: str, simplex_tol: float
) -> str:
    """``task`` unless it is ``"auto"``; else the batch's task by majority of output signatures
    (production's outputs first, the candidate's when production has none), or ``"unknown"``."""
    if task != "auto":
        return task
    for outs in (prod, cand):
        sample = list(itertools.islice((o for o in outs if o is not None), _INFER_SAMPLE))
        votes = Counter(_signatures(sample, simplex_tol))
        votes.pop("unknown", None)
        if votes:
            return votes.most_common(1)[0][0]
    return "unknown"
