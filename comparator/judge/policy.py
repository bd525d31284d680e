"""The verdict policy: margins, weights, window and minimums, loaded from TOML and validated.

``load_policy(None)`` returns the documented default (``comparator/judge/default_policy.toml``). A policy
file only needs the keys it changes; it is merged over the default, then validated as a whole. An
invalid value raises :class:`PolicyError` whose message names the file and the key::

    policy.toml: checks.latency_p99.margin: must be > 0
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "CHECK_GROUPS",
    "CHECK_IDS",
    "DEFAULT_POLICY_PATH",
    "DEMO_POLICY_PATH",
    "CheckPolicy",
    "Policy",
    "PolicyError",
    "Segments",
    "load_policy",
]

DEFAULT_POLICY_PATH = Path(__file__).with_name("default_policy.toml")
DEMO_POLICY_PATH = Path(__file__).with_name("demo_policy.toml")

Group = Literal["reliability", "divergence", "latency", "resources"]

#: Every check of VERDICT.md and the score group it counts in.
CHECK_GROUPS: dict[str, Group] = {
    "coverage": "divergence",
    "error_delta": "reliability",
    "timeout_delta": "reliability",
    "invalid_delta": "reliability",
    "top1_disagreement": "divergence",
    "js_tail": "divergence",
    "class_psi": "divergence",
    "reg_bias": "divergence",
    "reg_tolerance": "divergence",
    "emb_cosine_tail": "divergence",
    "rank_rbo": "divergence",
    "latency_p50": "latency",
    "latency_p95": "latency",
    "latency_p99": "latency",
    "memory_steady": "resources",
    "memory_headroom": "resources",
    "memory_leak": "resources",
}
CHECK_IDS = tuple(CHECK_GROUPS)


class PolicyError(ValueError):
    """An invalid policy; ``str()`` is one line naming the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckPolicy(_Strict):
    margin: float = Field(gt=0)
    critical: bool = False
    enabled: bool = True
    noise_margin: float | None = Field(
        default=None, gt=0
    )  # top1: margin on the excess over the twin
    fail_at: float | None = Field(default=None, gt=0)  # class_psi: WARN below, FAIL at or above
    abs_ms: float | None = Field(default=None, ge=0)  # latency: PASS when the difference CS ≤ this
    abs_mib: float | None = Field(default=None, ge=0)  # memory_steady: PASS when Δ ≤ this


class Window(_Strict):
    min_hours: float = Field(default=24.0, gt=0)
    max_hours: float = Field(default=48.0, gt=0)
    warmup_minutes: float = Field(default=30.0, ge=0)
    early_reject_hours: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.max_hours < self.min_hours:
            raise ValueError("max_hours: must be ≥ min_hours")
        return self


class Minimums(_Strict):
    units: int = Field(default=1000, ge=1)
    events: int = Field(default=10, ge=1)
    memory_hours: int = Field(default=3, ge=2)


class Weights(_Strict):
    reliability: float = Field(default=30.0, ge=0)
    divergence: float = Field(default=40.0, ge=0)
    latency: float = Field(default=20.0, ge=0)
    resources: float = Field(default=10.0, ge=0)


class Score(_Strict):
    promote: float = Field(default=90.0, ge=0, le=100)
    reject: float = Field(default=75.0, ge=0, le=100)


class Segments(_Strict):
    """Segment checks (VERDICT.md "Segments"): the top ``k`` values of each dimension (the rest as
    one "(other)" segment), each critical reliability and divergence check at α_check / (k · dims).
    ``dimensions``: the ones checked; empty: every dimension the pairs carry."""

    enabled: bool = True
    k: int = Field(default=10, ge=2, le=64)
    dimensions: tuple[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,39}$")], ...] = Field(
        default=(), max_length=8
    )


class Policy(_Strict):
    """A validated policy. Build it with :func:`load_policy`."""

    name: str = Field(min_length=1)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    n_opt: float = Field(default=0.0, ge=0)  # 0: estimate from the first hour, then freeze
    window: Window = Window()
    minimums: Minimums = Minimums()
    weights: Weights = Weights()
    score: Score = Score()
    segments: Segments = Segments()
    checks: dict[str, CheckPolicy]

    @field_validator("checks")
    @classmethod
    def _known_checks(cls, v: dict[str, CheckPolicy]) -> dict[str, CheckPolicy]:
        unknown = sorted(set(v) - set(CHECK_IDS))
        if unknown:
            raise ValueError(f"unknown check {unknown[0]!r} (known: {', '.join(CHECK_IDS)})")
        missing = sorted(set(CHECK_IDS) - set(v))
        if missing:
            raise ValueError(f"missing check {missing[0]!r}")
        return v

    def check(self, check_id: str) -> CheckPolicy:
        return self.checks[check_id]

    def weight(self, group: str) -> float:
        return float(getattr(self.weights, group))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise PolicyError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path.name}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def _describe(err: Any) -> str:
    kind, ctx = err["type"], {k: _num(v) for k, v in (err.get("ctx") or {}).items()}
    match kind:
        case "greater_than":
            return f"must be > {ctx['gt']}"
        case "greater_than_equal":
            return f"must be ≥ {ctx['ge']}"
        case "less_than":
            return f"must be < {ctx['lt']}"
        case "less_than_equal":
            return f"must be ≤ {ctx['le']}"
        case "extra_forbidden":
            return "unknown key"
        case "missing":
            return "required"
        case "value_error":
            return str(ctx.get("error", err["msg"]))
        case _:
            return str(err["msg"]).lower()


def load_policy(path: Path | None) -> Policy:
    """Load and validate a policy; ``None`` gives the default. Raises :class:`PolicyError`."""
    data = _read(DEFAULT_POLICY_PATH)
    label = DEFAULT_POLICY_PATH.name
    if path is not None:
        data = _merge(data, _read(Path(path)))
        label = Path(path).name
    checks = data.get("checks")
    if isinstance(checks, dict):
        for check_id in checks:
            if check_id not in CHECK_GROUPS:
                raise PolicyError(
                    f"{label}: checks.{check_id}: unknown check (known: {', '.join(CHECK_IDS)})"
                )
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "policy"
        raise PolicyError(f"{label}: {loc}: {_describe(err)}") from None
