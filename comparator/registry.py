"""Move a model-registry alias to the candidate: the last step of a shadow experiment.

The registry is a directory of models, each with an alias file the serving side reads::

    models/<name>/aliases.json   {"production": "1", "candidate": "2"}

:func:`promote` points ``production`` at the candidate's version. It refuses unless the stored
verdict is PROMOTE, or ``force`` is given (which is logged at WARNING with the decision it overrode).
The file is replaced atomically (write a temporary file in the same directory, fsync, ``os.replace``),
so a reader sees either the old or the new aliases, never half a file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Promotion", "RegistryError", "promote", "promote_experiment", "read_aliases"]

log = logging.getLogger(__name__)


class RegistryError(ValueError):
    """The promotion was refused or the registry is unusable; ``str()`` is one line."""


@dataclass(frozen=True)
class Promotion:
    model: str
    previous: str
    promoted: str
    forced: bool
    decision: str | None


def _alias_path(registry: Path, model: str) -> Path:
    if not model or "/" in model or model.startswith("."):
        raise RegistryError(f"--model: invalid model name {model!r}")
    return Path(registry) / model / "aliases.json"


def read_aliases(registry: Path, model: str) -> dict[str, str]:
    path = _alias_path(registry, model)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RegistryError(f"--registry: no alias file {path}") from None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"--registry: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) for k in ("production", "candidate")
    ):
        raise RegistryError(
            f"--registry: {path} must hold string 'production' and 'candidate' versions"
        )
    return {str(k): str(v) for k, v in data.items()}


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".aliases.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def promote(
    registry: Path,
    model: str,
    *,
    decision: str | None,
    force: bool = False,
    expected_candidate: str | None = None,
) -> Promotion:
    """Point ``production`` at the candidate's version when ``decision`` is PROMOTE (or ``force``).

    ``expected_candidate`` is the version the verdict judged; a registry whose candidate alias has
    moved since is refused (the verdict was about another model) unless forced.
    """
    aliases = read_aliases(registry, model)
    previous, candidate = aliases["production"], aliases["candidate"]
    problems = []
    if decision != "PROMOTE":
        problems.append(f"the stored verdict is {decision or 'missing'}, not PROMOTE")
    if expected_candidate is not None and expected_candidate != candidate:
        problems.append(
            f"the verdict judged version {expected_candidate}, the candidate alias is {candidate}"
        )
    if problems and not force:
        raise RegistryError(
            f"refusing to promote {model}: " + "; ".join(problems) + " (use --force to override)"
        )
    if problems:
        log.warning(
            "FORCED promotion of %s %s → %s despite: %s",
            model,
            previous,
            candidate,
            "; ".join(problems),
        )
    _write_atomic(_alias_path(registry, model), {**aliases, "production": candidate})
    log.info("promoted %s: production %s → %s", model, previous, candidate)
    return Promotion(model, previous, candidate, bool(problems), decision)


async def promote_experiment(
    store: Any, experiment: str, registry: Path, model: str, *, force: bool = False
) -> Promotion:
    """Promote according to the latest stored verdict of ``experiment``."""
    from comparator.exceptions import UnknownExperiment

    info = await store.get_experiment(experiment)
    if info is None:
        raise UnknownExperiment(f"no experiment named {experiment!r}")
    latest = await store.latest_verdict(experiment)
    decision = None if latest is None else latest.get("decision")
    return promote(
        registry, model, decision=decision, force=force, expected_candidate=info.cand_version
    )
