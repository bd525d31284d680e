# One command set for people and CI.  `make dev` once, then `make check`.
PY ?= .venv/bin/python

.PHONY: dev lock lint fmt types test check demo bench models
dev:            ## create .venv from the hash-pinned lock and install shadowtee into it
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
lock:           ## re-resolve the locks from pyproject.toml (uv, hashes, all platforms); the runtime lock (the image's) has no dev extra, plus the build backend
	uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes -o requirements.lock
	printf 'setuptools>=77\nwheel\n' | uv pip compile pyproject.toml - --universal --python-version 3.11 --generate-hashes -o requirements-runtime.lock
	uv pip compile requirements-gpu.in --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes -o requirements-gpu.lock
lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
fmt:
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .
types:
	$(PY) -m mypy
test:
	$(PY) -m pytest
check: lint types test
demo:
	.venv/bin/shadowtee demo --out demo-out
models:         ## regenerate the bundled ONNX models bit-for-bit
	$(PY) scripts/make_models.py
bench:
	$(PY) bench/proxy_bench.py
