"""Build the bundled digits models, reproducibly, into a model-registry layout.

Run ``python scripts/make_models.py [--out models]``. Everything comes from scikit-learn's bundled
``load_digits`` data (no download) and fixed seeds, and the ONNX files are written with fixed
producer fields, so running the script twice with the same library versions gives the same bytes
(``--check`` verifies that the files on disk are exactly what the script would write, without
touching them). On x86-64 the training runs on OpenBLAS's AVX2 kernels (``_pin_blas_kernels``),
so AVX2 and AVX-512 machines write the same bytes::

    models/digits/
      aliases.json            {"production": "1", "candidate": "2"}   (moved by ``shadowtee promote``)
      golden.jsonl            100 OIP v2 infer request bodies from the test split
      1/model.onnx            production: an MLP (64-128-10)
      1/metadata.json         sha256, library versions, recipe, test accuracy, agreement with v1
      2/...                   good candidate: v1's network with float16 weights; half the file,
                              the same top-1 answers, probabilities within float16 rounding
      3/...                   bad candidate: logistic regression trained with the labels 1 and 7
                              swapped; disagrees with v1 on ~20% of the test split

Every model takes ``input`` (float32, ``[None, 64]``, pixel values 0-16) and returns ``label``
(int64, ``[None]``) and ``probabilities`` (float32, ``[None, 10]``) -- plain tensors, no ZipMap.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _pin_blas_kernels() -> None:
    """Train with OpenBLAS's AVX2 (Haswell) kernels wherever the CPU has AVX2.

    OpenBLAS picks its kernels by CPU when it loads, and its AVX-512 kernels round differently:
    the same seeds gave other weights, and other bytes, on an AVX-512 machine. Pinned, x86-64
    machines with AVX2 or AVX-512 write the same files. Must run before numpy is imported.
    """
    try:
        with open("/proc/cpuinfo") as f:
            avx2 = any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:  # not Linux: left to OpenBLAS
        return
    if avx2:
        os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")


_pin_blas_kernels()

# ruff: noqa: E402 - the libraries below load OpenBLAS, after the kernels are pinned
import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

SEED = 0
TEST_SIZE = 0.25
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
GOLDEN_COUNT = 100
# Label corruption for the bad candidate: the kind of silent data bug a shadow run must catch.
CORRUPT_LABELS = {1: 7, 7: 1}


@dataclass(frozen=True)
class Recipe:
    version: str
    role: str
    description: str
    corrupt_labels: bool
    # The production network itself with its weights stored as float16: half the file, the same
    # answers to within float16 rounding (the usual "compressed" candidate).
    fp16_of_v1: bool = False

    def build(self) -> Pipeline:
        if self.version == "1":
            clf: Any = MLPClassifier(hidden_layer_sizes=(128,), max_iter=500, random_state=SEED)
        else:
            clf = LogisticRegression(max_iter=2000, random_state=SEED)
        return Pipeline([("scale", StandardScaler()), ("clf", clf)])


RECIPES = (
    Recipe("1", "production", "StandardScaler + MLPClassifier(hidden_layer_sizes=(128,))", False),
    Recipe(
        "2",
        "good candidate",
        "v1's StandardScaler + MLPClassifier with every weight matrix stored as float16",
        False,
        fp16_of_v1=True,
    ),
    Recipe(
        "3",
        "bad candidate",
        "StandardScaler + LogisticRegression trained with labels 1 and 7 swapped",
        True,
    ),
)


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y
    )
    return x_tr, x_te, y_tr, y_te


def _to_onnx(pipe: Pipeline, version: str) -> bytes:
    clf = pipe.named_steps["clf"]
    model = convert_sklearn(
        pipe,
        name=f"digits_v{version}",
        initial_types=[("input", FloatTensorType([None, 64]))],
        final_types=[("label", None), ("probabilities", None)],
        options={id(clf): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    # Fixed identity fields: nothing in the file depends on when or where it was built.
    model.producer_name = "shadowtee/scripts/make_models.py"
    model.producer_version = "1"
    model.domain = "shadowtee.digits"
    model.model_version = int(version)
    model.doc_string = f"digits classifier v{version}"
    model.graph.doc_string = ""
    del model.metadata_props[:]
    # skl2onnx collects opset domains in a set; its order follows Python's string hashing.
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    for domain, version in opsets:
        model.opset_import.add(domain=domain, version=version)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString(deterministic=True))


def _fp16_weights(blob: bytes) -> bytes:
    """Store every float32 weight tensor of ``blob`` as float16, cast back to float32 on load."""
    model = onnx.load_from_string(blob)
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or np.prod(init.dims) < 64:
            continue
        arr = onnx.numpy_helper.to_array(init).astype(np.float16)
        name = init.name
        init.CopyFrom(onnx.numpy_helper.from_array(arr, name + "_fp16"))
        casts.append(
            onnx.helper.make_node(
                "Cast", [name + "_fp16"], [name], to=onnx.TensorProto.FLOAT, name=name + "_cast"
            )
        )
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString(deterministic=True))


def _run(blob: bytes, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    label, proba = sess.run(["label", "probabilities"], {"input": x})
    return np.asarray(label), np.asarray(proba)


def _parameters(clf: Any) -> int:
    if isinstance(clf, MLPClassifier):
        return sum(int(a.size) for a in [*clf.coefs_, *clf.intercepts_])
    return int(clf.coef_.size + clf.intercept_.size)


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def build(out: Path) -> dict[Path, bytes]:
    """Return every file of the registry (path -> bytes) without writing anything."""
    # One BLAS thread: a multi-threaded reduction sums in a different order from run to run, and
    # the last bits of the coefficients (and so the file's sha256) would follow.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        x_tr, x_te, y_tr, y_te = _split()
        files: dict[Path, bytes] = {}
        root = out / "digits"
        data_digest = hashlib.sha256(x_tr.tobytes() + y_tr.astype(np.int64).tobytes()).hexdigest()
        prod_labels: np.ndarray | None = None
        prod_pipe: Pipeline | None = None
        for recipe in RECIPES:
            y_fit = y_tr.copy()
            if recipe.corrupt_labels:
                # A swap keeps all ten classes, so the signature stays [None, 10].
                for src, dst in CORRUPT_LABELS.items():
                    y_fit[y_tr == src] = dst
            if recipe.fp16_of_v1:
                assert prod_pipe is not None
                pipe = prod_pipe
                blob = _fp16_weights(_to_onnx(pipe, recipe.version))
            else:
                pipe = recipe.build().fit(x_tr, y_fit)
                blob = _to_onnx(pipe, recipe.version)
            if prod_pipe is None:
                prod_pipe = pipe
            labels, _ = _run(blob, x_te)
            if prod_labels is None:
                prod_labels = labels
            n_params = _parameters(pipe.named_steps["clf"])
            meta = {
                "name": "digits",
                "version": recipe.version,
                "role": recipe.role,
                "file": "model.onnx",
                "sha256": hashlib.sha256(blob).hexdigest(),
                "size_bytes": len(blob),
                "parameters": n_params,
                "signature": {
                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
                    "outputs": [
                        {"name": "label", "datatype": "INT64", "shape": [-1]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                    ],
                },
                "training": {
                    "recipe": recipe.description,
                    "dataset": "sklearn.datasets.load_digits",
                    "split": f"train_test_split(test_size={TEST_SIZE}, random_state={SEED}, "
                    "stratify=y)",
                    "train_rows": len(x_tr),
                    "test_rows": len(x_te),
                    "train_data_sha256": data_digest,
                    "seed": SEED,
                    "corrupted_labels": (
                        {str(k): v for k, v in CORRUPT_LABELS.items()}
                        if recipe.corrupt_labels
                        else None
                    ),
                },
                "metrics": {
                    "test_accuracy": round(float((labels == y_te).mean()), 6),
                    "top1_agreement_with_v1": round(float((labels == prod_labels).mean()), 6),
                },
                "frameworks": {
                    "scikit-learn": sklearn.__version__,
                    "skl2onnx": skl2onnx.__version__,
                    "onnx": onnx.__version__,
                    "numpy": np.__version__,
                    "opset": TARGET_OPSET,
                },
            }
            files[root / recipe.version / "model.onnx"] = blob
            files[root / recipe.version / "metadata.json"] = _dump(meta)
        files[root / "aliases.json"] = _dump({"candidate": "2", "production": "1"})
        lines = []
        for i in range(GOLDEN_COUNT):
            body = {
                "id": f"digits-test-{i:03d}",
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 64],
                        "datatype": "FP32",
                        "data": [float(v) for v in x_te[i]],
                    }
                ],
            }
            lines.append(json.dumps(body, separators=(",", ":")))
        files[root / "golden.jsonl"] = ("\n".join(lines) + "\n").encode()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent.parent / "models"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the files on disk differ from a rebuild"
    )
    args = parser.parse_args(argv)
    files = build(args.out)
    stale = [p for p, b in files.items() if not p.exists() or p.read_bytes() != b]
    if args.check:
        for p in stale:
            print(f"differs: {p}", file=sys.stderr)
        return 1 if stale else 0
    for path, blob in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        print(f"{hashlib.sha256(blob).hexdigest()[:12]}  {len(blob):>7}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
