"""The comparator's settings: one frozen value object, built once in ``main()`` and passed down.

Every field reads from a flag (``--max-body-bytes``), an environment variable
(``SHADOWTEE_COMPARATOR__MAX_BODY_BYTES``), a mounted secret file (``token``) or the
``[comparator]`` table of the TOML config file. Per-experiment output reading rules live in
``[comparator.experiments.<name>]`` (``task``, ``output_pointer``, ``rtol``, ``atol``); the entry
``"*"`` applies to experiments not named.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from comparator.measure.normalize import NormalizeConfig
from contract import EXPERIMENT_PATTERN, parse_host_port

__all__ = ["ComparatorSettings", "ExperimentSettings"]


class ExperimentSettings(BaseModel):
    """How to read one experiment's outputs (see comparator.measure.normalize.NormalizeConfig)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Literal["auto", "classification", "regression", "embedding", "ranking"] = "auto"
    output_pointer: str | None = None
    rtol: Annotated[float, Field(ge=0)] = 0.05
    atol: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("output_pointer")
    @classmethod
    def _pointer(cls, value: str | None) -> str | None:
        if value is not None and value and not value.startswith("/"):
            raise ValueError(f"a JSON pointer starts with '/', got {value!r}")
        return value


class ComparatorSettings(BaseSettings):
    """Everything ``shadowtee comparator`` can be told."""

    model_config = SettingsConfigDict(
        env_prefix="SHADOWTEE_COMPARATOR__",
        env_nested_delimiter="__",
        secrets_dir=os.environ.get("SHADOWTEE_SECRETS_DIR") or None,
        frozen=True,
        extra="forbid",
    )

    listen: str = "127.0.0.1:8090"
    # Processes serving the API on one socket (comparator.workers); one per spare core.
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    db: str = "sqlite:///shadowtee.db"
    policy: str | None = None  # verdict policy file; None = the documented default policy
    # Memory sampler: side -> /metrics URL, sides "prod" and "candidate" (or "cand").
    scrape: dict[str, str] = Field(default_factory=dict)
    scrape_interval_s: Annotated[float, Field(gt=0, le=3600)] = 15.0
    scrape_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    scrape_experiment: Annotated[str, Field(pattern=EXPERIMENT_PATTERN)] = "default"
    # Bearer token every /v1/ route requires (reads too); None = no authentication (loopback only).
    token: SecretStr | None = None
    store_request_bodies: bool = False
    max_body_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 32 * 1024 * 1024
    experiments: dict[str, ExperimentSettings] = Field(default_factory=dict)
    # Latency warm-up applied at ingest; None takes the policy's window.warmup_minutes, so the
    # verdict's latency and memory checks skip the same first minutes.
    warmup_minutes: Annotated[float, Field(ge=0)] | None = None
    # Retention: raw pairs older than this are purged (aggregates stay); 0 keeps them forever.
    retention_days: Annotated[float, Field(ge=0)] = 0.0
    # Periodic looks: every experiment is judged (and saved) this often; 0 disables the loop.
    verdict_interval_s: Annotated[float, Field(ge=0, le=86400)] = 300.0
    # Webhook posted on every change of decision, signed with HMAC-SHA256 of "<unix time>.<body>".
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    # Hash fraction of raw pairs kept past retention for drill-down.
    raw_sample_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    # Replicas on one PostgreSQL database elect one leader (comparator.leader) to sample memory,
    # take the periodic looks and purge: each polls the lock every leader_interval_s, and a
    # leader whose session stops answering within leader_timeout_s steps down. ``replica`` names
    # this process in the looks and samples it stores (default: host name and pid).
    leader_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    leader_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    replica: Annotated[str, Field(min_length=1, max_length=128)] | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty: decision events are signed with it")
        return value

    @field_validator("db")
    @classmethod
    def _db(cls, value: str) -> str:
        scheme = value.split(":", 1)[0].split("+", 1)[0]
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(f"expected sqlite:///PATH or postgresql://…, got {value!r}")
        return value

    @field_validator("scrape")
    @classmethod
    def _scrape(cls, value: dict[str, str]) -> dict[str, str]:
        out = {}
        for side, url in value.items():
            norm = {"prod": "prod", "production": "prod", "candidate": "cand", "cand": "cand"}
            if side not in norm:
                raise ValueError(f"scrape side must be prod or candidate, got {side!r}")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"expected an http(s):// /metrics URL for {side}, got {url!r}")
            out[norm[side]] = url
        return out

    @model_validator(mode="after")
    def _webhook(self) -> ComparatorSettings:
        if self.webhook_url is not None:
            parts = urlsplit(self.webhook_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"webhook_url: expected an http(s):// URL, got {self.webhook_url!r}"
                )
            if self.webhook_secret is None:
                raise ValueError(
                    "webhook_url is set but webhook_secret is not: events must be signed"
                )
        return self

    def normalize_config(self, experiment: str, *, policy_warmup_minutes: float = 30.0) -> object:
        """The comparator.measure.normalize.NormalizeConfig for ``experiment``.

        ``policy_warmup_minutes`` is the loaded policy's warm-up, used unless ``warmup_minutes`` is
        set explicitly.
        """

        exp = self.experiments.get(experiment) or self.experiments.get("*") or ExperimentSettings()
        return NormalizeConfig(
            task=exp.task,
            output_pointer=exp.output_pointer,
            rtol=exp.rtol,
            atol=exp.atol,
            warmup_minutes=(
                self.warmup_minutes if self.warmup_minutes is not None else policy_warmup_minutes
            ),
        )
