"""The proxy's settings: one frozen value object, built once in ``main()`` and passed down.

Every field reads from a flag (``--shadow-timeout-ms``), an environment variable
(``SHADOWTEE_PROXY__SHADOW_TIMEOUT_MS``), a mounted secret file (``comparator_token``) or the
``[proxy]`` table of the TOML config file. Validation happens here, at start-up, so a wrong value
stops the process with one line naming it instead of failing on the first request.
"""

from __future__ import annotations

import os
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract import (
    EXPERIMENT_PATTERN,
    SEGMENT_DIMENSION_PATTERN,
    SEGMENT_DIMENSIONS_MAX,
    parse_host_port,
)
from proxy.headers import HOP_BY_HOP

__all__ = ["ProxySettings", "parse_host_port"]

DEFAULT_TEE_ROUTES = ("/v2/models/*/infer", "/v1/models/*:predict", "/predict", "/invocations")
DEFAULT_REDACT = ("authorization", "cookie", "x-api-key")
# A header whose name holds one of these (after "_" reads as "-") is taken for a credential,
# whatever redact_headers says: it can never be a segment dimension.
SECRET_HEADER_WORDS = (
    "auth",
    "cookie",
    "token",
    "secret",
    "passw",
    "key",
    "session",
    "jwt",
    "bearer",
    "credential",
    "signature",
    "private",
    "csrf",
    "xsrf",
)


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s)://host[:port] URL, got {value!r}")
    return value.rstrip("/")


class ProxySettings(BaseSettings):
    """Everything ``shadowtee proxy`` can be told; defaults follow DESIGN §3–§4."""

    model_config = SettingsConfigDict(
        env_prefix="SHADOWTEE_PROXY__",
        env_nested_delimiter="__",
        secrets_dir=os.environ.get("SHADOWTEE_SECRETS_DIR") or None,
        frozen=True,
        extra="forbid",
    )

    # Where to listen and where to send.
    listen: str = "127.0.0.1:8080"
    admin_listen: str = "127.0.0.1:9090"
    prod: str
    candidate: str
    # A comparator base URL, or several separated by commas: the shipper sends to one and moves
    # on to the next when it fails or refuses this sidecar (README, "Running a fleet").
    comparator: str | None = None
    comparator_token: SecretStr | None = None
    experiment: Annotated[str, Field(pattern=EXPERIMENT_PATTERN)] = "default"

    # Production path.
    prod_timeout_ms: Annotated[float, Field(gt=0)] = 30_000.0
    prod_pool_size: Annotated[int, Field(ge=1)] = 256
    request_id_header: Annotated[str, Field(min_length=1)] = "X-Shadow-Request-Id"
    client_max_size: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    # Idle keep-alive connections, and connections whose request head never completes (slowloris),
    # are closed after this long.
    keepalive_timeout_s: Annotated[float, Field(gt=0)] = 75.0
    # A request body that has not fully arrived after this long is answered 408 and closed.
    client_body_timeout_s: Annotated[float, Field(gt=0)] = 60.0

    # The tee.
    shadow_timeout_ms: Annotated[float, Field(gt=0)] = 250.0
    sample_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    sample_key: str = "request_id"  # or a header name
    max_inflight: Annotated[int, Field(ge=1)] = 256
    # How long a timed-out candidate call may keep its connection to drain a late answer.
    candidate_linger_ms: Annotated[float, Field(ge=0)] = 5_000.0
    tee_routes: tuple[str, ...] = DEFAULT_TEE_ROUTES
    tee_methods: tuple[str, ...] = ("POST",)
    max_tee_body_bytes: Annotated[int, Field(ge=0)] = 8 * 1024 * 1024
    # What the live candidate calls hold in all: each request body twice (its call and its pair),
    # the answers arriving, production's answers waiting for them. Past it a tee is shed, so
    # large bodies cannot make max_inflight calls hold gigabytes.
    max_tee_bytes: Annotated[int, Field(ge=1024 * 1024)] = 32 * 1024 * 1024
    redact_headers: tuple[str, ...] = DEFAULT_REDACT
    forward_auth_to_candidate: bool = False

    # Pairs.
    include_request_body: bool = False
    max_pair_body_bytes: Annotated[int, Field(ge=0)] = 1024 * 1024
    buffer_max_pairs: Annotated[int, Field(ge=1)] = 100_000

    # Shipping.
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    flush_interval_ms: Annotated[float, Field(gt=0)] = 1_000.0
    ship_timeout_ms: Annotated[float, Field(gt=0)] = 10_000.0
    ship_retries: Annotated[int, Field(ge=0)] = 3
    retry_backoff_ms: Annotated[float, Field(ge=0)] = 200.0
    spool_dir: str = "shadowtee-spool"
    max_spool_bytes: Annotated[int, Field(ge=0)] = 1024 * 1024 * 1024
    ship_queue_max_pairs: Annotated[int, Field(ge=1)] = 100_000
    # The bodies the queue's pairs may hold in all: a comparator slower than the traffic must
    # not make the sidecar's memory grow without end (past it pairs count as queue_full).
    ship_queue_max_bytes: Annotated[int, Field(ge=1024 * 1024)] = 64 * 1024 * 1024

    # Shutdown.
    shutdown_timeout_s: Annotated[float, Field(ge=0)] = 30.0
    tee_grace_ms: Annotated[float, Field(ge=0)] = 1_000.0

    # Shipping by size: a batch stays below this many bytes (and below the limit the comparator
    # announces); a spooled batch failing while this many others go through is set aside.
    max_batch_bytes: Annotated[int, Field(ge=16 * 1024)] = 8 * 1024 * 1024
    ship_poison_after: Annotated[int, Field(ge=1)] = 5

    # The data port's bounds on what clients make it hold (README, "Bounded memory").
    max_connections: Annotated[int, Field(ge=1)] = 4096
    max_buffered_bytes: Annotated[int, Field(ge=1024 * 1024)] = 256 * 1024 * 1024

    # Live control of the tee on the admin port (README, "Steering the tee live"): without a token
    # there is no write API. The breaker pauses the tee when the candidate's failure share over
    # ``breaker_window_s`` (at least ``breaker_min_calls`` calls) is above ``breaker_threshold``,
    # then sends one probe per ``breaker_probe_interval_s`` until ``breaker_probe_successes`` in a
    # row succeed.
    admin_token: SecretStr | None = None
    breaker: bool = False
    breaker_window_s: Annotated[float, Field(gt=0)] = 30.0
    breaker_min_calls: Annotated[int, Field(ge=1)] = 20
    breaker_threshold: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    breaker_probe_interval_s: Annotated[float, Field(gt=0)] = 5.0
    breaker_probe_successes: Annotated[int, Field(ge=1)] = 3

    # Segments (README, "Segments"): values written into each pair for the comparator's
    # per-segment checks. ``segment_route`` adds the route (dimension ``route``);
    # ``segment_pointers`` maps a dimension name to a JSON pointer into the request body;
    # ``segment_headers`` maps a dimension name to a request header (never a redacted, hop-by-hop
    # or credential-like one); ``segment_model_versions`` adds ``prod_version`` and
    # ``cand_version`` from each side's X-Model-Version. At most 8 dimensions in all.
    segment_route: bool = False
    segment_pointers: Annotated[
        dict[
            Annotated[str, Field(pattern=SEGMENT_DIMENSION_PATTERN)],
            Annotated[str, Field(pattern=r"^(/[^/]*)+$", max_length=200)],
        ],
        Field(max_length=8),
    ] = {}
    segment_headers: Annotated[
        dict[
            Annotated[str, Field(pattern=SEGMENT_DIMENSION_PATTERN)],
            Annotated[str, Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")],
        ],
        Field(max_length=8),
    ] = {}
    segment_model_versions: bool = False

    # Input validation (README, "Input validation"): off by default. On, an inference request
    # whose inputs do not match production's OIP model metadata (read at the first request for a
    # model and again every ``validate_refresh_s``) is answered 400 before production sees it.
    validate_inputs: bool = False
    validate_refresh_s: Annotated[float, Field(gt=0)] = 30.0
    validate_timeout_s: Annotated[float, Field(gt=0)] = 2.0

    @field_validator("listen", "admin_listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("prod", "candidate")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _check_url(value)

    @field_validator("comparator")
    @classmethod
    def _comparators(cls, value: str | None) -> str | None:
        """One comparator URL, or several separated by commas (replicas to fail over between)."""
        if value is None:
            return None
        urls = [u.strip() for u in value.split(",")]
        if any(not u for u in urls):
            raise ValueError("an empty URL in the comparator list")
        checked, seen = [], set()
        for url in urls:
            parts = urlsplit(url)
            if parts.username is not None or parts.password is not None:
                # It would show on /admin/status and in logs: the token has its own setting.
                raise ValueError(
                    "a comparator URL carries no user or password (use comparator_token)"
                )
            if parts.query or parts.fragment or "#" in url:
                raise ValueError(f"a comparator URL has no query or fragment, got {url!r}")
            try:
                port = parts.port
            except ValueError:
                raise ValueError(f"a comparator URL's port is 1-65535, got {url!r}") from None
            checked.append(_check_url(url) or "")
            key = (
                parts.scheme.lower(),
                (parts.hostname or "").lower(),
                port,
                parts.path.rstrip("/"),
            )
            if key in seen:
                raise ValueError(f"a URL named twice in the comparator list: {url!r}")
            seen.add(key)
        return ",".join(checked)

    @property
    def comparator_urls(self) -> tuple[str, ...]:
        return tuple(self.comparator.split(",")) if self.comparator else ()

    @field_validator("prod", "candidate")
    @classmethod
    def _plain_http(cls, value: str) -> str:
        if not value.startswith("http://"):
            raise ValueError(
                "production and the candidate are called over plain http:// "
                "(the proxy is a sidecar: TLS ends in front of it)"
            )
        return value

    @model_validator(mode="after")
    def _segment_dimensions(self) -> ProxySettings:
        names = (
            (["route"] if self.segment_route else [])
            + list(self.segment_pointers)
            + list(self.segment_headers)
            + (["prod_version", "cand_version"] if self.segment_model_versions else [])
        )
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"segment dimension named twice: {', '.join(twice)}")
        if len(names) > SEGMENT_DIMENSIONS_MAX:
            raise ValueError(
                f"{len(names)} segment dimensions; at most {SEGMENT_DIMENSIONS_MAX} in all"
            )
        refused = {h.lower() for h in self.redact_headers} | {h.decode() for h in HOP_BY_HOP}
        for dim, header in self.segment_headers.items():
            name = header.lower().replace("_", "-")
            if name in refused or any(w in name for w in SECRET_HEADER_WORDS):
                raise ValueError(
                    f"segment_headers.{dim}: {header!r} is redacted, hop-by-hop or a credential; "
                    "its value never leaves the proxy"
                )
        return self

    @field_validator("tee_methods")
    @classmethod
    def _upper(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m.upper() for m in value)

    @field_validator("redact_headers")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(h.lower() for h in value)

    @field_validator("tee_routes")
    @classmethod
    def _routes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for route in value:
            if not route.startswith("/"):
                raise ValueError(f"route {route!r} must start with /")
        return value

    @model_validator(mode="after")
    def _tee_bytes(self) -> ProxySettings:
        one_call = 2 * self.max_tee_body_bytes + 2 * self.max_pair_body_bytes
        if self.max_tee_bytes < one_call:
            raise ValueError(
                f"max_tee_bytes ({self.max_tee_bytes}) is below what one teed request may hold, "
                f"twice max_tee_body_bytes plus twice max_pair_body_bytes ({one_call}: its body "
                "held by its call and its pair, and the two answers): such a request could "
                "never be compared; raise max_tee_bytes or lower max_tee_body_bytes"
            )
        return self

    @model_validator(mode="after")
    def _distinct_ports(self) -> ProxySettings:
        if parse_host_port(self.listen) == parse_host_port(self.admin_listen) and not (
            self.listen.endswith(":0")
        ):
            raise ValueError("listen and admin_listen must differ")
        return self

    @property
    def shadow_timeout_s(self) -> float:
        return self.shadow_timeout_ms / 1000.0

    @property
    def prod_timeout_s(self) -> float:
        return self.prod_timeout_ms / 1000.0

    def public_view(self) -> dict[str, object]:
        """The effective configuration with secrets left out, for ``/admin/status``."""
        data = self.model_dump(mode="json", exclude={"comparator_token", "admin_token"})
        data["comparator_token"] = "***" if self.comparator_token else None
        data["admin_token"] = "***" if self.admin_token else None
        return data
