"""Parsing and checking OIP v2 infer bodies (pure; no server)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from serving.exceptions import InvalidRequestError
from serving.model import Signature, TensorSpec
from serving.oip import encode_response, parse_infer_request

SIG = Signature(
    inputs=(
        TensorSpec("x", "FP32", (-1, 3), np.dtype(np.float32)),
        TensorSpec("y", "INT64", (-1,), np.dtype(np.int64)),
    ),
    outputs=(
        TensorSpec("doubled", "FP32", (-1, 3), np.dtype(np.float32)),
        TensorSpec("next", "INT64", (-1,), np.dtype(np.int64)),
    ),
)
OUTS = ["doubled", "next"]


def _req(x: Any = None, y: Any = None, **extra: Any) -> bytes:
    x = x if x is not None else {"name": "x", "shape": [2, 3], "datatype": "FP32",
                                 "data": [1, 2, 3, 4, 5, 6]}  # fmt: skip
    y = y if y is not None else {"name": "y", "shape": [2], "datatype": "INT64", "data": [7, 8]}
    return json.dumps({"inputs": [x, y], **extra}).encode()


def test_valid_request_gives_typed_feeds_rows_and_id() -> None:
    req = parse_infer_request(_req(id="abc"), SIG, OUTS)
    assert req.rows == 2
    assert req.id == "abc"
    assert req.outputs is None
    assert req.feeds["x"].dtype == np.float32 and req.feeds["x"].shape == (2, 3)
    assert req.feeds["y"].tolist() == [7, 8]


def test_nested_data_is_accepted_row_major() -> None:
    x = {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]}
    req = parse_infer_request(_req(x=x), SIG, OUTS)
    assert req.feeds["x"].ravel().tolist() == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("x", "message"),
    [
        ({"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [0] * 6},
         "input 'x': datatype 'FP64' does not match the model's FP32"),
        ({"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0] * 8},
         "input 'x': shape [2, 4] does not match the model's [-1, 3]"),
        ({"name": "x", "shape": [6], "datatype": "FP32", "data": [0] * 6},
         "input 'x': shape [6] does not match the model's [-1, 3]"),
        ({"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [0] * 5},
         "input 'x': shape [2, 3] needs 6 values, data has 5"),
        ({"name": "x", "shape": [2, 3], "datatype": "FP32", "data": ["a"] * 6},
         "input 'x': data must be FP32 values"),
        ({"name": "x", "shape": [2, -3], "datatype": "FP32", "data": [0] * 6},
         "input 'x': shape must be a list of non-negative integers"),
        ({"name": "x", "shape": [2, 3], "datatype": "FP32", "data": "abc"},
         "input 'x': data must be a JSON array"),
        ({"name": "z", "shape": [2, 3], "datatype": "FP32", "data": [0] * 6},
         "input 'z' is not an input of this model; expected ['x', 'y']"),
    ],
)  # fmt: skip
def test_mismatched_input_is_rejected_naming_it(x: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        parse_infer_request(_req(x=x), SIG, OUTS)
    assert str(err.value).startswith(message)


def test_float_data_is_not_truncated_into_an_int_input() -> None:
    y = {"name": "y", "shape": [2], "datatype": "INT64", "data": [1.5, 2]}
    with pytest.raises(InvalidRequestError, match="input 'y': data must be INT64 values"):
        parse_infer_request(_req(y=y), SIG, OUTS)


def test_missing_input_is_named() -> None:
    doc = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    with pytest.raises(InvalidRequestError, match="input 'y' is missing"):
        parse_infer_request(json.dumps(doc).encode(), SIG, OUTS)


def test_inputs_that_disagree_on_rows_are_rejected() -> None:
    y = {"name": "y", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]}
    with pytest.raises(InvalidRequestError, match="batch dimension"):
        parse_infer_request(_req(y=y), SIG, OUTS)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b"[1, 2]", "request body must be a JSON object"),
        (b'{"inputs": []}', "inputs must be a non-empty JSON array"),
        (b'{"inputs": [1]}', "each input must be an object with a string name"),
    ],
)
def test_malformed_bodies_are_rejected(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        parse_infer_request(raw, SIG, OUTS)


def test_unknown_output_is_rejected_naming_it() -> None:
    with pytest.raises(InvalidRequestError, match="output 'nope' is not an output"):
        parse_infer_request(_req(outputs=[{"name": "nope"}]), SIG, OUTS)


def test_response_holds_only_the_wanted_outputs_in_order_and_echoes_id() -> None:
    outputs: dict[str, np.ndarray] = {
        "doubled": np.ones((1, 3), np.float32),
        "next": np.array([5], np.int64),
    }
    raw, header_length = encode_response(
        model_name="m", model_version="2", request_id="r1", outputs=outputs,
        specs={s.name: s for s in SIG.outputs}, wanted=("next",),
    )  # fmt: skip
    assert header_length is None
    doc = json.loads(raw)
    assert doc == {
        "model_name": "m",
        "model_version": "2",
        "id": "r1",
        "outputs": [{"name": "next", "datatype": "INT64", "shape": [1], "data": [5]}],
    }


def _binary_request(x: np.ndarray, y: np.ndarray, **extra: Any) -> tuple[bytes, str]:
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": list(x.shape), "datatype": "FP32",
                 "parameters": {"binary_data_size": x.nbytes}},
                {"name": "y", "shape": list(y.shape), "datatype": "INT64", "data": y.tolist()},
            ],
            **extra,
        }
    ).encode()  # fmt: skip
    return header + x.astype("<f4").tobytes(), str(len(header))


def test_binary_input_is_read_from_after_the_json_header() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 3
    raw, hdr = _binary_request(x, np.array([1, 2]))
    req = parse_infer_request(raw, SIG, OUTS, hdr)
    np.testing.assert_array_equal(req.feeds["x"], x)
    assert req.feeds["y"].tolist() == [1, 2]


def test_binary_input_of_the_wrong_size_is_rejected_naming_it() -> None:
    x = np.zeros((2, 3), np.float32)
    raw, hdr = _binary_request(x, np.array([1, 2]))
    with pytest.raises(InvalidRequestError, match="input 'x': binary_data_size 24 does not fit"):
        parse_infer_request(raw[:-4], SIG, OUTS, hdr)
    with pytest.raises(InvalidRequestError, match="needs the Inference-Header-Content-Length"):
        parse_infer_request(raw[: int(hdr)], SIG, OUTS)
    with pytest.raises(InvalidRequestError, match="does not fit a"):
        parse_infer_request(raw, SIG, OUTS, "99999")


def test_binary_outputs_follow_the_json_header() -> None:
    x = np.zeros((1, 3), np.float32)
    raw, hdr = _binary_request(
        x, np.array([1]), outputs=[{"name": "doubled", "parameters": {"binary_data": True}},
                                   {"name": "next"}],
    )  # fmt: skip
    req = parse_infer_request(raw, SIG, OUTS, hdr)
    assert req.binary_outputs == {"doubled"}
    outputs: dict[str, np.ndarray] = {
        "doubled": np.full((1, 3), 1.5, np.float32),
        "next": np.array([2], np.int64),
    }
    body, header_length = encode_response(
        model_name="m", model_version="1", request_id=None, outputs=outputs,
        specs={s.name: s for s in SIG.outputs}, wanted=req.outputs, binary=req.binary_outputs,
    )  # fmt: skip
    assert header_length is not None
    doc = json.loads(body[:header_length])
    assert doc["outputs"][0] == {"name": "doubled", "datatype": "FP32", "shape": [1, 3],
                                 "parameters": {"binary_data_size": 12}}  # fmt: skip
    assert doc["outputs"][1]["data"] == [2]
    np.testing.assert_array_equal(np.frombuffer(body[header_length:], "<f4"), [1.5] * 3)


def test_float32_outputs_round_trip_exactly_and_nan_inf_are_written_as_json_does() -> None:
    values = np.array([[0.1, np.nan, np.inf], [-np.inf, 1e-30, 3.4e38]], np.float32)
    raw, _ = encode_response(
        model_name="m", model_version="1", request_id=None, outputs={"doubled": values},
        specs={s.name: s for s in SIG.outputs}, wanted=None,
    )  # fmt: skip
    data = json.loads(raw)["outputs"][0]["data"]
    np.testing.assert_array_equal(np.asarray(data, np.float32), values.ravel())
    assert b"NaN" in raw and b"-Infinity" in raw
