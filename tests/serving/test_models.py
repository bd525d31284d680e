"""The bundled digits registry: files match their metadata, candidates behave as labelled."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from tests.serving.helpers import DIGITS, ROOT


def _test_split() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    _, x_te, _, y_te = train_test_split(
        x.astype(np.float32), y, test_size=0.25, random_state=0, stratify=y
    )
    return x_te, y_te


def _labels(version: str, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(
        str(DIGITS / version / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    label, proba = sess.run(["label", "probabilities"], {"input": x})
    assert np.asarray(proba).shape == (len(x), 10)
    return np.asarray(label)


@pytest.mark.parametrize("version", ["1", "2", "3"])
def test_each_model_matches_its_metadata_and_is_small(version: str) -> None:
    blob = (DIGITS / version / "model.onnx").read_bytes()
    meta = json.loads((DIGITS / version / "metadata.json").read_text())
    assert meta["name"] == "digits" and meta["version"] == version
    assert meta["sha256"] == hashlib.sha256(blob).hexdigest()
    assert len(blob) < 200_000
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in sess.get_inputs()] == [
        ("input", "tensor(float)", [None, 64])
    ]
    assert [(o.name, o.type) for o in sess.get_outputs()] == [
        ("label", "tensor(int64)"),
        ("probabilities", "tensor(float)"),
    ]


def test_good_candidate_mostly_agrees_and_bad_candidate_does_not() -> None:
    x, y = _test_split()
    prod, good, bad = (_labels(v, x) for v in ("1", "2", "3"))
    assert (good == prod).mean() > 0.95
    assert (bad == prod).mean() <= 0.85
    meta = {v: json.loads((DIGITS / v / "metadata.json").read_text()) for v in "123"}
    for v, labels in (("1", prod), ("2", good), ("3", bad)):
        assert meta[v]["metrics"]["test_accuracy"] == round(float((labels == y).mean()), 6)
        assert meta[v]["metrics"]["top1_agreement_with_v1"] == round(
            float((labels == prod).mean()), 6
        )
    # The good candidate is the compressed one: a smaller file, near-identical probabilities.
    assert meta["2"]["size_bytes"] < 0.6 * meta["1"]["size_bytes"]


def test_aliases_and_golden_set_are_well_formed() -> None:
    assert json.loads((DIGITS / "aliases.json").read_text()) == {
        "candidate": "2",
        "production": "1",
    }
    lines = (DIGITS / "golden.jsonl").read_text().splitlines()
    assert len(lines) == 100
    x, _ = _test_split()
    ids = set()
    for i, line in enumerate(lines):
        doc = json.loads(line)
        ids.add(doc["id"])
        (inp,) = doc["inputs"]
        assert (inp["name"], inp["shape"], inp["datatype"]) == ("input", [1, 64], "FP32")
        np.testing.assert_array_equal(np.asarray(inp["data"], np.float32), x[i])
    assert len(ids) == 100


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_make_models_regenerates_every_file_bit_for_bit() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_models.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
