"""The contract between the parts (contract/): one definition each, and the parts agree on it."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

import contract
from comparator.wire import Pair
from proxy.tee import TeeRules
from tests.comparator.store_support import make_pair


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:0", ("::1", 0)),
        (":9090", ("0.0.0.0", 9090)),
        ("host:65535", ("host", 65535)),
    ],
)
def test_host_port(value: str, expected: tuple[str, int]) -> None:
    assert contract.parse_host_port(value) == expected


@pytest.mark.parametrize("value", ["8080", "h:", "h:65536", "h:-1", "h:8o", "h:٣"])
def test_host_port_refuses_anything_else(value: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        contract.parse_host_port(value)


def test_the_tee_and_the_comparator_sample_the_same_keys() -> None:
    rng = random.Random(3)
    for rate in (0.0, 0.01, 0.3, 0.5, 0.99, 1.0):
        rules = TeeRules(["/*"], ["POST"], rate)
        keys = [f"{rng.getrandbits(64):x}-{i}" for i in range(2000)]
        picked = [k for k in keys if rules.sampled(k)]
        assert picked == [k for k in keys if contract.sampled(k, rate)]
        if 0 < rate < 1:  # and it is a sample of about that rate
            assert abs(len(picked) / len(keys) - rate) < 0.05


def test_a_pair_key_built_from_the_longest_client_id_fits_the_wire() -> None:
    longest_key = "x" * contract.MINTED_ABOVE + "~" + "0" * 16  # proxy.app.DataPort._pair_key
    assert len(longest_key) <= contract.REQUEST_ID_MAX
    doc = make_pair(1, "e", request_id=longest_key)
    assert Pair.model_validate(doc).request_id == longest_key
    doc["request_id"] = "x" * (contract.REQUEST_ID_MAX + 1)
    with pytest.raises(ValidationError, match="request_id"):
        Pair.model_validate(doc)
