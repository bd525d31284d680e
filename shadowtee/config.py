"""Build a deployable's settings from flags, environment and a TOML file, or fail in one line.

Precedence, highest first: command-line flags, ``SHADOWTEE_<SECTION>__<NAME>`` environment variables,
files under ``secrets_dir``, the ``[<section>]`` table of ``--config FILE``, then the defaults.
Each deployable owns one ``BaseSettings`` class (``env_prefix="SHADOWTEE_<SECTION>__"``); this module
only loads it and turns a ``ValidationError`` into a :class:`ConfigError` whose message names the
flag and the environment variable, so ``main()`` prints one line and exits 2, never a traceback.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

__all__ = ["ConfigError", "load_settings"]

S = TypeVar("S", bound=BaseSettings)


class ConfigError(Exception):
    """Bad configuration; ``str()`` is the one line to print."""


class _TomlSection(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = dict(data)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _read_section(config_file: Path | None, section: str) -> dict[str, Any]:
    if config_file is None:
        return {}
    try:
        with open(config_file, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config: file not found: {config_file}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {config_file} is not valid TOML: {exc}") from None
    table = doc.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"--config: [{section}] in {config_file} must be a table")
    return table


def _describe(cls: type[BaseSettings], loc: tuple[int | str, ...]) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    if not loc:
        return "settings"
    name = str(loc[0])
    flag = "--" + name.replace("_", "-")
    env = prefix + "__".join(str(p).upper() for p in loc)
    dotted = ".".join(str(p) for p in loc)
    return f"{flag} ({env}, config key {dotted})"


def load_settings(
    cls: type[S],
    *,
    section: str,
    overrides: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
) -> S:
    """Return ``cls`` built from every source, or raise :class:`ConfigError` naming the option."""
    file_data = _read_section(config_file, section)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}

    class _Loaded(cls):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls_,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                init_settings,
                env_settings,
                file_secret_settings,
                _TomlSection(settings_cls, file_data),
            )

    _Loaded.__name__ = cls.__name__
    _Loaded.__qualname__ = cls.__qualname__
    try:
        loaded = _Loaded(**flags)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(
            f"invalid {_describe(cls, tuple(err['loc']))}: {err['msg']}{more}"
        ) from None
    # Hand back an instance of the declared class, not of the loader subclass.
    return cls.model_construct(**{name: getattr(loaded, name) for name in cls.model_fields})
