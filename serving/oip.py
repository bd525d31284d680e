"""Open Inference Protocol v2 (KServe v2) infer bodies: parse and check a request, build a response.

A request is checked against the model's :class:`~serving.model.Signature` before it reaches the
batcher, and every mismatch is an :class:`InvalidRequestError` whose message names the input and
what was expected, e.g. ``input 'input': shape [1, 63] does not match the model's [-1, 64]``.
``data`` may be flat (row-major) or nested, as the protocol allows.

The binary tensor extension (what tritonclient sends by default) is supported both ways: when the
request carries ``Inference-Header-Content-Length: N``, the first N bytes are the JSON header and
the rest holds the raw little-endian tensors of the inputs whose ``parameters.binary_data_size``
is set, in input order. Outputs asked for with ``parameters.binary_data: true`` (or all of them,
with the request parameter ``binary_data_output: true``) come back the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic_core import from_json, to_json

from serving.exceptions import InvalidRequestError
from serving.model import Signature, TensorSpec

__all__ = ["InferRequest", "encode_response", "parse_infer_request"]

# numpy dtype kinds a JSON array may arrive as, per target kind: ints are fine for floats,
# but a float is never silently truncated into an int, and only true/false make a BOOL.
_ACCEPTED_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}


@dataclass(frozen=True)
class InferRequest:
    """A checked request: numpy feeds, row count, wanted outputs (``None`` = all) and ``id``."""

    feeds: dict[str, np.ndarray]
    rows: int
    outputs: tuple[str, ...] | None
    id: str | None
    binary_outputs: frozenset[str] = frozenset()


def _fmt(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _tensor(raw: Any, spec: TensorSpec, blob: memoryview | None = None) -> np.ndarray:
    """Check one input against ``spec``; ``blob`` holds its raw bytes (binary extension)."""
    where = f"input {spec.name!r}"
    datatype = raw.get("datatype")
    if datatype != spec.datatype:
        raise InvalidRequestError(
            f"{where}: datatype {datatype!r} does not match the model's {spec.datatype}"
        )
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidRequestError(
            f"{where}: shape must be a list of non-negative integers, got {shape!r}"
        )
    if len(shape) != len(spec.shape) or any(
        want >= 0 and got != want for got, want in zip(shape, spec.shape, strict=True)
    ):
        raise InvalidRequestError(
            f"{where}: shape {_fmt(shape)} does not match the model's {_fmt(spec.shape)}"
        )
    need = math.prod(shape)
    if blob is not None:
        if len(blob) != need * spec.dtype.itemsize:
            raise InvalidRequestError(
                f"{where}: shape {_fmt(shape)} needs {need * spec.dtype.itemsize} bytes of "
                f"{spec.datatype}, binary_data_size is {len(blob)}"
            )
        return (
            np.frombuffer(blob, dtype=spec.dtype.newbyteorder("<"))
            .astype(spec.dtype)
            .reshape(shape)
        )
    data = raw.get("data")
    if not isinstance(data, list):
        raise InvalidRequestError(f"{where}: data must be a JSON array")
    try:
        arr = np.asarray(data)
    except ValueError:
        raise InvalidRequestError(f"{where}: data is a ragged nested array") from None
    if arr.size != need:
        raise InvalidRequestError(
            f"{where}: shape {_fmt(shape)} needs {need} values, data has {arr.size}"
        )
    if arr.size and arr.dtype.kind not in _ACCEPTED_KINDS[spec.dtype.kind]:
        raise InvalidRequestError(f"{where}: data must be {spec.datatype} values")
    try:
        return arr.astype(spec.dtype, copy=False).reshape(shape)
    except (OverflowError, ValueError):
        raise InvalidRequestError(f"{where}: data does not fit {spec.datatype}") from None


def parse_infer_request(
    body: bytes,
    signature: Signature,
    output_names: list[str],
    header_length: str | None = None,
) -> InferRequest:
    """Parse and check one infer body, or raise :class:`InvalidRequestError`.

    ``header_length`` is the ``Inference-Header-Content-Length`` header, when the request has one.
    """
    binary = memoryview(b"")
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidRequestError(
                f"Inference-Header-Content-Length {header_length!r} does not fit a "
                f"{len(body)}-byte body"
            )
        binary = memoryview(body)[int(header_length) :]
        body = body[: int(header_length)]
    try:
        # pydantic-core's parser (jiter) reads a body of numbers about ten times faster than the
        # json module; the Python objects it builds are the same.
        doc = from_json(body)
    except ValueError as exc:
        raise InvalidRequestError(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidRequestError("request body must be a JSON object")
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise InvalidRequestError("id must be a string")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequestError("inputs must be a non-empty JSON array")
    specs = {s.name: s for s in signature.inputs}
    feeds: dict[str, np.ndarray] = {}
    for raw in raw_inputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise InvalidRequestError("each input must be an object with a string name")
        name = raw["name"]
        if name not in specs:
            raise InvalidRequestError(
                f"input {name!r} is not an input of this model; expected {sorted(specs)}"
            )
        if name in feeds:
            raise InvalidRequestError(f"input {name!r} is given twice")
        params = raw.get("parameters")
        blob = None
        if isinstance(params, dict) and "binary_data_size" in params:
            size = params["binary_data_size"]
            if header_length is None:
                raise InvalidRequestError(
                    f"input {name!r}: binary_data_size needs the Inference-Header-Content-Length "
                    "header"
                )
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
                raise InvalidRequestError(
                    f"input {name!r}: binary_data_size {size!r} does not fit the "
                    f"{len(binary)} bytes after the JSON header"
                )
            blob, binary = binary[:size], binary[size:]
        feeds[name] = _tensor(raw, specs[name], blob)
    if len(binary):
        raise InvalidRequestError(f"{len(binary)} bytes after the JSON header belong to no input")
    missing = [n for n in specs if n not in feeds]
    if missing:
        raise InvalidRequestError(f"input {missing[0]!r} is missing; expected {sorted(specs)}")
    rows = _rows(feeds, signature)
    wanted = _outputs(doc.get("outputs"), output_names)
    return InferRequest(feeds, rows, wanted, req_id, _binary_outputs(doc, wanted, output_names))


def _binary_outputs(
    doc: dict[str, Any], wanted: tuple[str, ...] | None, output_names: list[str]
) -> frozenset[str]:
    params = doc.get("parameters")
    everything = isinstance(params, dict) and params.get("binary_data_output") is True
    chosen: set[str] = set(output_names if wanted is None else wanted) if everything else set()
    for o in doc.get("outputs") or ():
        p = o.get("parameters")
        if isinstance(p, dict) and isinstance(p.get("binary_data"), bool):
            (chosen.add if p["binary_data"] else chosen.discard)(o["name"])
    return frozenset(chosen)


def _rows(feeds: dict[str, np.ndarray], signature: Signature) -> int:
    if not signature.batched:
        return 1
    counts = {name: arr.shape[0] for name, arr in feeds.items()}
    if len(set(counts.values())) > 1:
        raise InvalidRequestError(f"inputs disagree on the batch dimension: {counts}")
    rows = int(next(iter(counts.values())))
    if rows < 1:
        raise InvalidRequestError(f"input {next(iter(counts))!r}: the batch dimension must be >= 1")
    return rows


def _outputs(raw: Any, output_names: list[str]) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw
    ):
        raise InvalidRequestError("outputs must be a JSON array of objects with a string name")
    for o in raw:
        if o["name"] not in output_names:
            raise InvalidRequestError(
                f"output {o['name']!r} is not an output of this model; expected {output_names}"
            )
    return tuple(o["name"] for o in raw)


def encode_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    specs: dict[str, TensorSpec],
    wanted: tuple[str, ...] | None,
    binary: frozenset[str] = frozenset(),
) -> tuple[bytes, int | None]:
    """The OIP v2 response body for ``outputs`` (all of them, or ``wanted`` in that order).

    Returns the body and, when some outputs went binary, the length of its JSON header (the
    value of ``Inference-Header-Content-Length``), else ``None``.
    """
    names = wanted if wanted is not None else tuple(outputs)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in names:
        arr = outputs[name]
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": specs[name].datatype,
            "shape": list(arr.shape),
        }
        if name in binary:
            raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = arr.ravel().tolist()
        tensors.append(tensor)
    doc["outputs"] = tensors
    # NaN and Inf are written as the json module writes them, so a failing model still answers.
    header = to_json(doc, inf_nan_mode="constants")
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
