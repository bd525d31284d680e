"""Settings of ``shadowtee serve``: one frozen value object, built once and passed down.

Every field reads from a flag (``--max-batch``), an environment variable
(``SHADOWTEE_SERVE__MAX_BATCH``) or the ``[serve]`` table of the TOML config file. Checks run here,
at start-up, so a wrong value stops the process with one line naming it.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract import parse_host_port
from serving.registry import RegistryRef, parse_spec

__all__ = ["ServeSettings", "parse_host_port"]


class ServeSettings(BaseSettings):
    """Everything ``shadowtee serve`` can be told; defaults follow DESIGN §3–§4.

    ``max_batch=1`` turns dynamic batching off: every request runs alone, in arrival order.
    ``max_delay_ms`` is how long the first request of a batch may wait for company; the wait ends
    early once ``max_batch`` rows are queued. ``max_queue`` bounds the requests waiting for a
    batch; past it the server answers 503 with ``Retry-After: retry_after_s``.
    """

    model_config = SettingsConfigDict(
        env_prefix="SHADOWTEE_SERVE__",
        env_nested_delimiter="__",
        secrets_dir=os.environ.get("SHADOWTEE_SECRETS_DIR") or None,
        frozen=True,
        extra="forbid",
    )

    # An ONNX file, or DIR#name@alias naming a version in a model registry (serving.registry).
    model: Annotated[str, Field(min_length=1)]
    # Required for a file; for a registry model it defaults to the registry's name.
    name: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")] = None
    # For a file (default "1"); a registry model's version is the one its alias names.
    version: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] = None
    registry_poll_ms: Annotated[float, Field(gt=0)] = 1000.0
    listen: str = "127.0.0.1:8000"

    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpu_mem_limit_bytes: Annotated[int, Field(ge=0)] = 2 * 1024**3  # 0 = no limit
    # 0 = a thread per physical core, one CPU left to the event loop (default_intra_op_threads)
    intra_op_threads: Annotated[int, Field(ge=0)] = 0
    intra_op_spinning: bool = False  # True: lower latency on a dedicated machine, more CPU

    max_batch: Annotated[int, Field(ge=1, le=65536)] = 64
    max_delay_ms: Annotated[float, Field(ge=0, le=10_000)] = 2.0
    max_queue: Annotated[int, Field(ge=1)] = 1024
    retry_after_s: Annotated[int, Field(ge=0)] = 1

    warmup_runs: Annotated[int, Field(ge=0, le=1000)] = 3
    client_max_size: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        ref = parse_spec(value)
        if ref is not None:
            if not ref.aliases_file.is_file():
                raise ValueError(f"no registry file {ref.aliases_file}")
        elif not os.path.isfile(value):
            raise ValueError(f"no such ONNX file: {value}")
        return value

    @model_validator(mode="after")
    def _check_name(self) -> ServeSettings:
        ref = parse_spec(self.model)
        if ref is None and self.name is None:
            raise ValueError("--name is required when --model is an ONNX file")
        if ref is not None and self.version is not None:
            raise ValueError("--version cannot be set for a registry model: its alias names it")
        return self

    @property
    def registry(self) -> RegistryRef | None:
        return parse_spec(self.model)

    @property
    def model_name(self) -> str:
        ref = parse_spec(self.model)
        return self.name or (ref.name if ref is not None else "model")
