"""Opt-in input validation at the proxy (``validate_inputs``): "schema or death" before production.

With the setting on, the proxy reads production's OIP model metadata (``GET /v2/models/{name}``:
the inputs' names, datatypes and shapes, ``-1`` for any size) when it first sees a model and again
every ``validate_refresh_s`` (so a new model version's inputs are picked up), and answers ``400``,
naming the input, for an inference request (``POST /v2/models/{name}[/versions/{v}]/infer``)
whose inputs do not match — before production sees it, and without a pair (nothing was compared).

What is checked, per :func:`check_request`: the body is a JSON object with an ``inputs`` list;
every input is an object with a known ``name`` (given once), its ``datatype`` is the model's, its
``shape`` has the model's rank with each fixed dimension equal, and its ``data`` holds exactly
``prod(shape)`` values of the datatype's kind (numbers for FP*/INT*/UINT*, with integers for the
integer types, booleans for BOOL, strings for BYTES); every input of the model is present. An
input sent as binary (``parameters.binary_data_size``, the binary tensor extension) is checked for
name, datatype and shape, and its size against ``prod(shape)`` × the datatype's width.

A model whose metadata cannot be read (production down, not OIP) is not validated: the request
goes through as without the setting, and ``metadata_errors`` counts it. Validation never holds a
request for longer than one metadata read (``metadata_timeout_s``).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily

__all__ = [
    "INFER_PATH",
    "METADATA_MAX_BYTES",
    "InputSpec",
    "InputValidator",
    "ModelInputs",
    "ValidationCollector",
    "ValidationStats",
    "check_request",
    "install",
    "parse_metadata",
]

#: ``/v2/models/{name}[/versions/{version}]/infer``: the model's name is group 1.
INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")

_WIDTH = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BF16": 2,
}
MAX_VALUES = 1 << 24  # a declared shape beyond this is refused without counting the data
METADATA_MAX_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size


ModelInputs = dict[str, InputSpec]


def parse_metadata(doc: Any) -> ModelInputs:
    """The inputs of an OIP model metadata document; ``ValueError`` names what is wrong."""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise ValueError("model metadata: expected an object with an inputs list")
    out: ModelInputs = {}
    for i, raw in enumerate(doc["inputs"]):
        if not isinstance(raw, dict):
            raise ValueError(f"model metadata: inputs[{i}] is not an object")
        name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise ValueError(f"model metadata: inputs[{i}] needs a name and a datatype")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
        ):
            raise ValueError(f"model metadata: inputs[{i}].shape is not a list of sizes")
        out[name] = InputSpec(name, datatype.upper(), tuple(shape))
    return out


def _flat(data: Any) -> list[Any] | None:
    """The values of a (nested) list, row-major; None past MAX_VALUES."""
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
            if len(out) > MAX_VALUES:
                return None
    return out


def _kind_ok(datatype: str, values: list[Any]) -> bool:
    if datatype == "BYTES":
        return all(isinstance(v, str) for v in values)
    if datatype == "BOOL":
        return all(isinstance(v, bool) for v in values)
    if datatype.startswith(("INT", "UINT")):
        return all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    return all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


def check_request(body: bytes, inputs: ModelInputs, header_length: int | None = None) -> str | None:
    """Why ``body`` does not match ``inputs`` (one line naming the input), or None when it does.

    ``header_length``: the request's ``Inference-Header-Content-Length`` (the binary tensor
    extension): the JSON header is that many bytes, the rest the inputs' raw bytes.
    """
    head = body if header_length is None else body[:header_length]
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError):
        return "body: not a JSON inference request"
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        return "inputs: expected a list of input tensors"
    seen: set[str] = set()
    for i, raw in enumerate(doc["inputs"]):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            return f"inputs[{i}]: expected an object with a name"
        name = raw["name"]
        spec = inputs.get(name)
        if spec is None:
            return f"input {name!r}: not an input of this model (expected {sorted(inputs)})"
        if name in seen:
            return f"input {name!r}: given twice"
        seen.add(name)
        datatype = raw.get("datatype")
        if not isinstance(datatype, str) or datatype.upper() != spec.datatype:
            return f"input {name!r}: datatype {datatype!r}, the model expects {spec.datatype}"
        shape = raw.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            return f"input {name!r}: shape must be a list of sizes ≥ 0"
        if len(shape) != len(spec.shape) or any(
            want != -1 and got != want for got, want in zip(shape, spec.shape, strict=True)
        ):
            model = "[" + ", ".join(str(d) for d in spec.shape) + "]"
            return f"input {name!r}: shape {shape}, the model expects {model} (-1: any size)"
        count = math.prod(shape)
        if count > MAX_VALUES:
            return f"input {name!r}: shape {shape} holds more than {MAX_VALUES} values"
        params = raw.get("parameters")
        if isinstance(params, dict) and "binary_data_size" in params:
            size = params["binary_data_size"]
            width = _WIDTH.get(spec.datatype)
            if width is not None and size != count * width:
                return (
                    f"input {name!r}: binary_data_size {size!r}, shape {shape} of "
                    f"{spec.datatype} needs {count * width} bytes"
                )
            continue
        values = _flat(raw.get("data"))
        if values is None or len(values) != count:
            got = "too many" if values is None else len(values)
            return f"input {name!r}: data holds {got} values, shape {shape} needs {count}"
        if not _kind_ok(spec.datatype, values):
            return f"input {name!r}: data holds a value that is not {spec.datatype}"
    missing = sorted(set(inputs) - seen)
    if missing:
        return f"input {missing[0]!r}: missing (the model expects {sorted(inputs)})"
    return None


@dataclass
class ValidationStats:
    """What the validator did (``shadowtee_proxy_input_validation_*`` on /metrics)."""

    checked: int = 0
    rejected: int = 0
    metadata_reads: int = 0
    metadata_errors: int = 0
    metadata_changes: int = 0


Fetch = Callable[[str], Awaitable[tuple[int, bytes]]]


@dataclass
class _Entry:
    inputs: ModelInputs | None
    read_at: float
    pending: asyncio.Future[None] | None = None


@dataclass
class InputValidator:
    """Checks inference requests against production's metadata, read through ``fetch``
    (``path -> (status, body)``), cached per model for ``refresh_s``."""

    fetch: Fetch
    refresh_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    stats: ValidationStats = field(default_factory=ValidationStats)
    _models: dict[str, _Entry] = field(default_factory=dict)

    async def inputs(self, model: str) -> ModelInputs | None:
        """The model's inputs, read at most once per ``refresh_s`` (concurrent callers share a
        read); None when they cannot be read."""
        entry = self._models.get(model)
        now = self.clock()
        if entry is not None and now - entry.read_at < self.refresh_s:
            return entry.inputs
        if entry is not None and entry.pending is not None:
            await asyncio.shield(entry.pending)
            return self._models[model].inputs
        if entry is None:
            entry = self._models[model] = _Entry(None, -math.inf)
        entry.pending = asyncio.get_running_loop().create_future()
        try:
            new = await self._read(model)
            if entry.inputs is not None and new is not None and new != entry.inputs:
                self.stats.metadata_changes += 1
            entry.inputs, entry.read_at = new, self.clock()
        finally:
            entry.pending.set_result(None)
            entry.pending = None
        return entry.inputs

    async def _read(self, model: str) -> ModelInputs | None:
        self.stats.metadata_reads += 1
        try:
            status, body = await self.fetch(f"/v2/models/{model}")
            if status != 200:
                raise ValueError(f"status {status}")
            return parse_metadata(json.loads(body))
        except (TimeoutError, ValueError, OSError):
            self.stats.metadata_errors += 1
            return None

    async def check(self, path: str, body: bytes, header_length: int | None = None) -> str | None:
        """None when the request may go on; else the 400's one-line reason naming the input.
        Only inference requests to a model with readable metadata are checked."""
        m = INFER_PATH.match(path)
        if m is None:
            return None
        inputs = await self.inputs(m.group(1))
        if inputs is None:
            return None
        self.stats.checked += 1
        reason = check_request(body, inputs, header_length)
        if reason is not None:
            self.stats.rejected += 1
        return reason

    async def refusal(self, req: Any) -> str | None:
        """For the data port: the reason to answer ``req`` (a ``proxy.http`` request) with 400, or
        None. Reads a body still arriving whole first (what is validated is what is forwarded)."""
        if req.method != "POST" or INFER_PATH.match(req.path) is None:
            return None
        body = await req.read_body()
        raw = req.header(b"inference-header-content-length")
        header_length = int(raw) if raw is not None and raw.isdigit() and len(raw) < 12 else None
        reason = await self.check(req.path, body, header_length)
        if reason is None:
            return None
        short = reason if len(reason) <= 500 else reason[:497] + "..."
        return short.encode("utf-8", "replace").decode("utf-8")


def http_fetch(prod_url: str, timeout_s: float) -> Fetch:
    """``GET`` on production (a fresh connection per read: reads are rare), the body bounded."""
    import aiohttp

    base = prod_url.rstrip("/")

    async def fetch(path: str) -> tuple[int, bytes]:
        try:
            timeout = aiohttp.ClientTimeout(total=timeout_s)
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(base + path) as resp,
            ):
                return resp.status, await resp.content.read(METADATA_MAX_BYTES)
        except aiohttp.ClientError as exc:
            raise OSError(str(exc)) from None

    return fetch


class ValidationCollector:
    """The validator's counters on the proxy's ``/metrics``."""

    def __init__(self, stats: ValidationStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        s = self._stats
        yield CounterMetricFamily(
            "shadowtee_proxy_inputs_checked",
            "Inference requests checked against production's model metadata (validate_inputs).",
            value=s.checked,
        )
        yield CounterMetricFamily(
            "shadowtee_proxy_inputs_rejected",
            "Inference requests answered 400 by the proxy: inputs not matching the model.",
            value=s.rejected,
        )
        reads = CounterMetricFamily(
            "shadowtee_proxy_input_metadata_reads",
            "Reads of production's model metadata, by result.",
            labels=["result"],
        )
        reads.add_metric(["ok"], s.metadata_reads - s.metadata_errors)
        reads.add_metric(["error"], s.metadata_errors)
        reads.add_metric(["changed"], s.metadata_changes)
        yield reads


def install(settings: Any, registry: Any) -> InputValidator | None:
    """The data port's validator (None unless ``validate_inputs``), its counters registered."""
    if not settings.validate_inputs:
        return None
    v = InputValidator(
        http_fetch(settings.prod, settings.validate_timeout_s), settings.validate_refresh_s
    )
    registry.register(ValidationCollector(v.stats))
    return v
