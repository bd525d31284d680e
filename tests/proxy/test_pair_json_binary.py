"""Answers in the OIP binary tensor extension travel whole, base64, and decode at the comparator."""

from __future__ import annotations

import base64
import json

import numpy as np

from comparator.measure.normalize import NormalizeConfig, measure
from comparator.wire import Pair
from contract.outcomes import Outcome
from proxy.pair_json import encode_pair
from proxy.pairing import CompletedPair, Side


def _oip_binary(probs: list[float]) -> bytes:
    raw = np.asarray([probs], dtype="<f4").tobytes()
    header = json.dumps(
        {"model_name": "m", "outputs": [{"name": "probabilities", "datatype": "FP32",
         "shape": [1, len(probs)], "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()  # fmt: skip
    return header + raw


def _pair(prod: bytes | None, cand: bytes | None, req: bytes | None = None) -> CompletedPair:
    return CompletedPair(
        request_id="r1",
        ts=1_790_000_000.0,
        route="/v2/models/m/infer",
        request_sha256="0" * 64,
        request_body=req,
        prod=Side(Outcome.OK, status=200, latency_ms=3.0, body=prod),
        candidate=Side(Outcome.OK, status=200, latency_ms=4.0, body=cand),
    )


def test_a_binary_answer_travels_whole_and_is_compared() -> None:
    prod, cand = _oip_binary([0.7, 0.2, 0.1]), _oip_binary([0.1, 0.2, 0.7])
    line = encode_pair(_pair(prod, cand), experiment="e", max_body_bytes=10_000)
    pair = Pair.model_validate_json(line)
    assert pair.prod.body is None and pair.prod.body_bytes == len(prod)
    assert pair.prod.binary is not None and base64.b64decode(pair.prod.binary.base64) == prod
    assert pair.candidate.binary is not None
    assert base64.b64decode(pair.candidate.binary.base64) == cand
    m = measure([pair], NormalizeConfig())
    assert m.task == "classification" and m.top1_agree.tolist() == [0.0]
    assert not m.prod_invalid.any() and not m.cand_invalid.any()


def test_a_binary_request_body_travels_whole_when_kept() -> None:
    req = _oip_binary([1.0, 2.0])
    pair = Pair.model_validate_json(encode_pair(_pair(None, None, req), experiment="e",
                                                max_body_bytes=10_000))  # fmt: skip
    assert pair.request.body is None and pair.request.binary is not None
    assert base64.b64decode(pair.request.binary.base64) == req


def test_over_the_limit_only_the_size_travels() -> None:
    body = _oip_binary([0.5] * 100)
    pair = Pair.model_validate_json(
        encode_pair(_pair(body, body), experiment="e", max_body_bytes=len(body) - 1)
    )
    assert pair.prod.binary is None and pair.prod.body_bytes == len(body)
    assert pair.candidate.binary is None and pair.candidate.body_bytes == len(body)
    assert measure([pair], NormalizeConfig()).cand_invalid.tolist() == [True]


def test_json_answers_and_bodies_that_are_not_json_objects_carry_no_binary() -> None:
    for body in (b'{"outputs": []}', b"<html>502</html>", b"\x00\x01"):
        line = encode_pair(_pair(body, body), experiment="e", max_body_bytes=10_000)
        assert b'"binary"' not in line
        Pair.model_validate_json(line)
