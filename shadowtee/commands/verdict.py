"""``shadowtee verdict``: look at an experiment and print the scorecard (or JSON).

Exit status: 0 PROMOTE, 1 REJECT, 3 KEEP_OBSERVING, 2 usage error (bad option, unknown experiment,
invalid policy), so a deployment pipeline can branch on it directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

NAME = "verdict"
HELP = "judge an experiment: PROMOTE (exit 0), REJECT (1) or KEEP_OBSERVING (3)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", required=True, metavar="URL", help="sqlite:///PATH or postgresql://…"
    )
    parser.add_argument("--experiment", required=True, metavar="NAME", help="experiment to judge")
    parser.add_argument(
        "--policy", type=Path, metavar="FILE", help="policy TOML (default: built in)"
    )
    parser.add_argument(
        "--at",
        metavar="ISO8601",
        help="judge as of this time, not in the future (default: now); not saved if before the "
        "last stored look",
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.add_argument("--no-save", action="store_true", help="do not store this look")


def parse_at(value: str | None, now: datetime | None = None) -> datetime | None:
    """ISO 8601 (``Z`` allowed); a time without offset is UTC. A time after ``now`` (default: the
    clock) is refused: a stored look from the future would stand as the experiment's decision
    and keep every later look from being stored."""
    from shadowtee.config import ConfigError

    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--at: not an ISO 8601 time: {value!r}") from None
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts
    if ts > (now or datetime.now(UTC)):
        raise ConfigError(f"--at: {value} is in the future")
    return ts


def exit_code(decision: Any) -> int:
    from comparator.judge.decision import Decision

    match decision:
        case Decision.PROMOTE:
            return 0
        case Decision.REJECT:
            return 1
        case Decision.KEEP_OBSERVING:
            return 3
    raise AssertionError(decision)


def scorecard(verdict: Any) -> str:
    """The human-readable form: decision, reasons, then one line per check."""
    lines = [
        f"experiment {verdict.experiment} at {verdict.at.isoformat(timespec='seconds')} "
        f"({verdict.elapsed_hours:.1f} h, policy {verdict.policy_name})",
        f"decision: {verdict.decision}   score {verdict.score:.1f}/100",
    ]
    lines += [f"  - {r}" for r in verdict.reasons]
    lines.append("")
    lines.append(f"  {'check':<19}{'status':<14}{'C':<3}reason")
    for c in verdict.checks:
        eta = f"  (~{c.eta_hours:.1f} h)" if c.eta_hours is not None else ""
        lines.append(f"  {c.id:<19}{c.status!s:<14}{'*' if c.critical else '':<3}{c.reason}{eta}")
    return "\n".join(lines)


async def _judge(args: argparse.Namespace, at: datetime | None, policy: Any) -> Any:
    from comparator.judge.verdict import judge
    from comparator.store.store import Store

    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter is not the answer
    store = await Store.open(args.db)
    try:
        return await judge(store, args.experiment, policy, at, save=not args.no_save)
    finally:
        await store.close()


def run(args: argparse.Namespace) -> int:
    from comparator.exceptions import StoreError, UnknownExperiment
    from comparator.judge.policy import PolicyError, load_policy
    from shadowtee.config import ConfigError

    at = parse_at(args.at)
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        raise ConfigError(f"--policy: {exc}") from None
    try:
        verdict = asyncio.run(_judge(args, at, policy))
    except UnknownExperiment:
        raise ConfigError(f"--experiment: no experiment named {args.experiment!r}") from None
    except StoreError as exc:
        raise ConfigError(f"--db: {exc}") from None
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2, ensure_ascii=False))
    else:
        print(scorecard(verdict))
    sys.stdout.flush()
    return exit_code(verdict.decision)
