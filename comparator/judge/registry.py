"""Move a model-registry alias to the candidate: the last step of a shadow experiment.

The registry is a directory of models, each with an alias file the serving side reads::

    models/<name>/aliases.json   {"production": "1", "candidate": "2"}

:func:`promote` points ``production`` at the candidate's version. It refuses unless the stored
verdict is PROMOTE, or ``force`` is given (which is logged at WARNING with the decision it overrode).
Stored verdicts come only from the comparator's periodic look and ``shadowtee verdict`` (the HTTP
verdict route stores nothing); one dated after now was not taken by either and is refused too.
The file is replaced atomically (write a temporary file in the same directory, fsync, ``os.replace``),
so a reader sees either the old or the new aliases, never half a file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from comparator.exceptions import UnknownExperiment

__all__ = ["Promotion", "RegistryError", "promote", "promote_experiment", "read_aliases"]

log = logging.getLogger(__name__)

# Clock skew allowed between the machine that stored a verdict and the one promoting.
CLOCK_SKEW = timedelta(minutes=5)


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
    judged_at: datetime | None = None,
    now: datetime | None = None,
) -> Promotion:
    """Point ``production`` at the candidate's version when ``decision`` is PROMOTE (or ``force``).

    ``expected_candidate`` is the version the verdict judged; a registry whose candidate alias has
    moved since is refused (the verdict was about another model) unless forced. ``judged_at``,
    the time the verdict looked at, may not be later than ``now`` (default: the clock) by more
    than :data:`CLOCK_SKEW`.
    """
    aliases = read_aliases(registry, model)
    previous, candidate = aliases["production"], aliases["candidate"]
    problems = []
    if decision != "PROMOTE":
        problems.append(f"the stored verdict is {decision or 'missing'}, not PROMOTE")
    elif judged_at is not None and judged_at > (now or datetime.now(UTC)) + CLOCK_SKEW:
        problems.append(f"the stored verdict is dated {judged_at.isoformat()}, in the future")
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

    info = await store.get_experiment(experiment)
    if info is None:
        raise UnknownExperiment(f"no experiment named {experiment!r}")
    latest = await store.latest_verdict(experiment)
    decision = None if latest is None else latest.get("decision")
    judged_at = None
    if latest is not None:
        try:
            judged_at = datetime.fromisoformat(str(latest.get("at")))
        except ValueError:
            decision = None  # a stored verdict without a readable time is not one to act on
        else:
            if judged_at.tzinfo is None:
                judged_at = judged_at.replace(tzinfo=UTC)
    return promote(
        registry,
        model,
        decision=decision,
        force=force,
        expected_candidate=info.cand_version,
        judged_at=judged_at,
    )
