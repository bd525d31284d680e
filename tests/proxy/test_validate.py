"""Input validation against OIP model metadata (proxy/validate.py): the rules and the cache."""

from __future__ import annotations

import asyncio
import json

import pytest

from proxy.validate import InputValidator, check_request, parse_metadata

META = {
    "name": "digits",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
}
SPECS = parse_metadata(META)


def _req(**over: object) -> bytes:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0.0, 1.0, 2.0, 3.5]}
    tensor.update(over)
    return json.dumps({"inputs": [tensor]}).encode()


def test_a_matching_request_passes() -> None:
    assert check_request(_req(), SPECS) is None
    assert check_request(_req(shape=[2, 4], data=[[1, 2, 3, 4], [5, 6, 7, 8]]), SPECS) is None


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", "body:"),
        (b'{"inputs": 3}', "inputs:"),
        (_req(name="pixels"), "input 'pixels': not an input"),
        (_req(datatype="INT64"), "input 'input': datatype 'INT64'"),
        (_req(shape=[1, 5], data=[0] * 5), "input 'input': shape [1, 5]"),
        (_req(shape=[4]), "input 'input': shape [4]"),
        (_req(data=[1.0, 2.0]), "input 'input': data holds 2 values"),
        (_req(data=[1.0, 2.0, "x", 3.0]), "not FP32"),
        (_req(data=[1.0, 2.0, True, 3.0]), "not FP32"),
        (_req(shape=[1, -4]), "shape must be"),
        (b'{"inputs": []}', "input 'input': missing"),
        (_req(shape=[10**9, 4]), "more than"),
    ],
)
def test_a_mismatch_is_named(body: bytes, needle: str) -> None:
    reason = check_request(body, SPECS)
    assert reason is not None and needle in reason, reason


def test_twice_and_binary_inputs() -> None:
    t = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]}
    assert "given twice" in (check_request(json.dumps({"inputs": [t, t]}).encode(), SPECS) or "")
    header = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                     "parameters": {"binary_data_size": 16}}]}
    ).encode()  # fmt: skip
    assert check_request(header + b"\0" * 16, SPECS, header_length=len(header)) is None
    bad = header.replace(b"16", b"12")
    reason = check_request(bad + b"\0" * 12, SPECS, header_length=len(bad))
    assert reason is not None and "needs 16 bytes" in reason


def test_bad_metadata_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"inputs\[0\].shape"):
        parse_metadata({"inputs": [{"name": "x", "datatype": "FP32", "shape": "64"}]})
    with pytest.raises(ValueError, match="inputs list"):
        parse_metadata({"name": "m"})


async def test_metadata_is_read_once_per_refresh_and_changes_are_picked_up() -> None:
    now = [0.0]
    docs = [META]
    reads: list[str] = []

    async def fetch(path: str) -> tuple[int, bytes]:
        reads.append(path)
        await asyncio.sleep(0)
        return 200, json.dumps(docs[0]).encode()

    v = InputValidator(fetch, refresh_s=30.0, clock=lambda: now[0])
    path = "/v2/models/digits/infer"
    results = await asyncio.gather(*(v.check(path, _req()) for _ in range(5)))
    assert results == [None] * 5 and reads == ["/v2/models/digits"]
    assert await v.check("/v2/models/digits/versions/3/infer", _req(datatype="FP64")) is not None
    assert await v.check("/v2/health/ready", b"") is None  # not an inference request
    docs[0] = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]}
    now[0] = 29.0
    assert await v.check(path, _req(datatype="FP64")) is not None  # still the cached metadata
    now[0] = 31.0
    assert await v.check(path, _req(datatype="FP64")) is None  # read again: the new model
    assert len(reads) == 2 and v.stats.metadata_changes == 1
    assert (v.stats.checked, v.stats.rejected) == (8, 2)


async def test_unreadable_metadata_lets_requests_through_and_is_counted() -> None:
    async def fetch(path: str) -> tuple[int, bytes]:
        return 404, b"no"

    v = InputValidator(fetch)
    assert await v.check("/v2/models/m/infer", b"garbage") is None
    assert (v.stats.metadata_errors, v.stats.checked) == (1, 0)
