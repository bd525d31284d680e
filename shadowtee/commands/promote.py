"""``shadowtee promote``: move the registry's production alias to the candidate after a PROMOTE.

Exit 0 when promoted, 1 when refused (the stored verdict is not PROMOTE), 2 on a usage error.
``--force`` promotes anyway and logs what it overrode.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

NAME = "promote"
HELP = "point the model registry's production alias at the candidate (needs a stored PROMOTE)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", required=True, metavar="URL", help="sqlite:///PATH or postgresql://…"
    )
    parser.add_argument(
        "--experiment", required=True, metavar="NAME", help="experiment whose verdict decides"
    )
    parser.add_argument(
        "--registry", required=True, type=Path, metavar="DIR", help="model registry directory"
    )
    parser.add_argument("--model", required=True, metavar="NAME", help="model whose aliases move")
    parser.add_argument(
        "--force", action="store_true", help="promote without a PROMOTE verdict (logged)"
    )


async def _promote(args: argparse.Namespace) -> Any:
    from comparator.judge.registry import promote_experiment
    from comparator.store.store import Store

    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter is not the answer
    store = await Store.open(args.db)
    try:
        return await promote_experiment(
            store, args.experiment, args.registry, args.model, force=args.force
        )
    finally:
        await store.close()


def run(args: argparse.Namespace) -> int:
    from comparator.exceptions import StoreError, UnknownExperiment
    from comparator.judge.registry import RegistryError
    from shadowtee.config import ConfigError

    try:
        result = asyncio.run(_promote(args))
    except UnknownExperiment:
        raise ConfigError(f"--experiment: no experiment named {args.experiment!r}") from None
    except StoreError as exc:
        raise ConfigError(f"--db: {exc}") from None
    except RegistryError as exc:
        message = str(exc)
        if message.startswith("--"):
            raise ConfigError(message) from None
        print(f"shadowtee promote: {message}", file=sys.stderr)
        return 1
    forced = " (forced)" if result.forced else ""
    print(f"promoted {result.model}: production {result.previous} → {result.promoted}{forced}")
    return 0
