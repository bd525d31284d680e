"""Fixtures for the end-to-end tests: real ``shadowtee`` subprocesses on free loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from shadowtee.supervise import Supervisor, free_port, shadowtee_argv
from tests.e2e.helpers import INFER, MODELS

Launch = Callable[[], tuple[list[str], str, dict[str, int]]]


@pytest.fixture(scope="module")
def digits_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``shadowtee serve`` for v1, v2 and v3; maps the version to its infer URL."""
    assert (MODELS / "3" / "model.onnx").is_file(), f"bundled models missing under {MODELS}"
    logs = tmp_path_factory.mktemp("serve-logs")
    sup = Supervisor(logs)
    urls: dict[str, str] = {}

    def launcher(version: str) -> Launch:
        def launch() -> tuple[list[str], str, dict[str, int]]:
            port = free_port()
            urls[version] = f"http://127.0.0.1:{port}{INFER}"
            argv = shadowtee_argv(
                "serve",
                "--model",
                str(MODELS / version / "model.onnx"),
                "--name",
                "digits",
                "--version",
                version,
                "--listen",
                f"127.0.0.1:{port}",
                "--device",
                "cpu",
            )
            return argv, f"http://127.0.0.1:{port}/v2/health/ready", {"listen": port}

        return launch

    try:
        children = [sup.start(f"serve-v{v}", launcher(v)) for v in ("1", "2", "3")]
        sup.wait_ready(children, timeout_s=60)
        yield urls
    finally:
        sup.stop_all()
