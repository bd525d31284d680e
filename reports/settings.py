"""Settings of ``shadowtee report`` (flags, ``SHADOWTEE_REPORT__*`` environment, ``[report]`` in TOML)."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract import EXPERIMENT_PATTERN

__all__ = ["ReportSettings"]

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ReportSettings(BaseSettings):
    """What to report on and where to write it."""

    model_config = SettingsConfigDict(
        env_prefix="SHADOWTEE_REPORT__",
        env_nested_delimiter="__",
        secrets_dir=None,
        extra="forbid",
    )

    db: Annotated[
        str, Field(min_length=1, description="SQLAlchemy URL of the comparator's database")
    ]
    experiment: Annotated[str, Field(pattern=EXPERIMENT_PATTERN)]
    day: date
    out: Path
    policy: Path | None = None
    tz: str = "UTC"

    @field_validator("day", mode="before")
    @classmethod
    def _iso_day(cls, value: Any) -> Any:
        if isinstance(value, str) and not _DAY.match(value):
            raise ValueError(f"expected a day as YYYY-MM-DD, got {value!r}")
        return value

    @field_validator("tz")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as UTC)"
            ) from None
        return value
