"""The OIP binary tensor extension, read: a JSON header, then each output's raw bytes where the
header gives ``parameters.binary_data_size``; decoded into the JSON document the output readers
take (:mod:`comparator.measure.outputs`). A body that does not decode is None: an invalid output.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from pydantic_core import from_json

from comparator.measure.outputs import shape_size

__all__ = ["decode_binary"]


# OIP v2 datatypes with a fixed width, as little-endian numpy dtypes (BYTES is length-prefixed).
_DTYPES = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_HEADER_SCAN = json.JSONDecoder()


def _header_end(raw: bytes) -> int | None:
    """Where the JSON object a body starts with ends (its byte length), or None.

    Read as latin-1, every byte is one character, so the decoder's end index is a byte offset;
    the structural characters of JSON are ASCII, so multi-byte UTF-8 inside strings cannot move it.
    """
    try:
        _, end = _HEADER_SCAN.raw_decode(raw.decode("latin-1"))
    except ValueError:
        return None
    return end


def _tensor_data(datatype: Any, blob: bytes, count: int | None) -> list[Any] | None:
    """The values of one binary tensor as JSON would hold them, or None when ``blob`` does not
    hold ``count`` elements of ``datatype`` (or the datatype has no JSON form)."""
    if datatype == "BYTES":
        values: list[Any] = []
        at = 0
        while at < len(blob):
            if at + 4 > len(blob):
                return None
            (size,) = struct.unpack_from("<I", blob, at)
            at += 4
            if at + size > len(blob):
                return None
            values.append(blob[at : at + size].decode("utf-8", "replace"))
            at += size
        return values if count is None or len(values) == count else None
    dtype = _DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None or len(blob) % dtype.itemsize:
        return None
    if count is not None and len(blob) != count * dtype.itemsize:
        return None
    arr = np.frombuffer(blob, dtype=dtype)
    return arr.tolist()  # type: ignore[no-any-return]


def decode_binary(raw: bytes, header_length: int | None = None) -> Any:
    """The JSON document an OIP binary-tensor body stands for, or None when it is not one.

    ``header_length`` is ``Inference-Header-Content-Length`` when known; otherwise the header is
    the JSON object the body starts with (blank padding after it allowed). The tensors' declared
    ``binary_data_size`` must fill the rest of the body exactly, and each must hold
    ``prod(shape)`` elements of its datatype; an entry that does not gets no ``data`` (so it
    reads as no output). A JSON body with no binary part comes back as itself: NaN and Infinity,
    which a JSON answer may carry, read as floats.
    """
    end = header_length if header_length is not None else _header_end(raw)
    if end is None or end > len(raw):
        return None
    try:
        doc = from_json(raw[:end], allow_inf_nan=True)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return doc if not raw[end:].strip() else None
    binary: list[tuple[dict[str, Any], int]] = []
    for key in ("outputs", "inputs"):
        tensors = doc.get(key)
        for tensor in tensors if isinstance(tensors, list) else ():
            params = tensor.get("parameters") if isinstance(tensor, dict) else None
            size = params.get("binary_data_size") if isinstance(params, dict) else None
            if size is None:
                continue
            if type(size) is not int or size < 0:
                return None
            binary.append((tensor, size))
    at = len(raw) - sum(size for _, size in binary)  # where the tensors start
    if at < end or (at > end and (header_length is not None or raw[end:at].strip())):
        return None  # the sizes do not fill the body after the header exactly
    for tensor, size in binary:
        blob = raw[at : at + size]
        at += size
        shape = tensor.get("shape")
        try:
            count = shape_size(tuple(shape)) if isinstance(shape, list) else -1
        except TypeError:  # an unhashable dimension
            count = -1
        data = _tensor_data(tensor.get("datatype"), blob, count if count >= 0 else None)
        if data is not None:
            tensor["data"] = data
        else:
            tensor.pop("data", None)
    return doc
