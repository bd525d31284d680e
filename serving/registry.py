"""A model registry on disk, and the ``DIR#name@alias`` spelling of ``--model``.

Layout (what ``scripts/make_models.py`` writes and ``shadowtee promote`` edits)::

    DIR/name/aliases.json          {"production": "1", "candidate": "2"}
    DIR/name/<version>/model.onnx
    DIR/name/<version>/metadata.json

``--model models#digits@production`` serves whatever version the alias names. The server re-reads
``aliases.json`` every ``registry_poll_ms``; when the alias moves it loads and warms the new
version beside the old one and swaps it in atomically (blue/green in one process).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from serving.exceptions import ModelLoadError

__all__ = ["RegistryRef", "parse_spec", "resolve"]

_SPEC = re.compile(
    r"^(?P<root>.+)#(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)@(?P<alias>[A-Za-z0-9._-]+)$"
)


@dataclass(frozen=True)
class RegistryRef:
    root: Path
    name: str
    alias: str

    @property
    def aliases_file(self) -> Path:
        return self.root / self.name / "aliases.json"

    def __str__(self) -> str:
        return f"{self.root}#{self.name}@{self.alias}"


def parse_spec(spec: str) -> RegistryRef | None:
    """``DIR#name@alias`` -> a :class:`RegistryRef`; a plain file path -> ``None``."""
    m = _SPEC.match(spec)
    if m is None:
        return None
    return RegistryRef(Path(m["root"]), m["name"], m["alias"])


def resolve(ref: RegistryRef) -> tuple[str, Path]:
    """(version, model file) the alias names now, or :class:`ModelLoadError` saying what is wrong."""
    try:
        aliases = json.loads(ref.aliases_file.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"--model {ref}: no {ref.aliases_file}") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"--model {ref}: cannot read {ref.aliases_file}: {exc}") from None
    if not isinstance(aliases, dict) or not isinstance(aliases.get(ref.alias), str | int):
        raise ModelLoadError(f"--model {ref}: alias {ref.alias!r} not in {ref.aliases_file}")
    version = str(aliases[ref.alias])
    path = ref.root / ref.name / version / "model.onnx"
    if not path.is_file():
        raise ModelLoadError(f"--model {ref}: alias {ref.alias!r} names version {version}, "
                             f"but {path} does not exist")  # fmt: skip
    return version, path
