"""The ``shadowtee`` command line: one subcommand per module in :mod:`shadowtee.commands`.

Each command module declares ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``
and imports its package lazily inside ``run`` so ``shadowtee --help`` stays fast. Exit codes: the
command's own (``verdict``: 0 PROMOTE, 1 REJECT, 3 KEEP_OBSERVING), 2 for a usage or configuration
error (one line on stderr, never a traceback), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from shadowtee import __version__
from shadowtee.config import ConfigError

__all__ = ["build_parser", "main"]

COMMANDS = (
    "proxy", "serve", "comparator", "verdict", "promote", "report", "replay", "demo", "db", "tee",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shadowtee",
        description="Shadow-mode a candidate ML model on real traffic.",
    )
    parser.add_argument("--version", action="version", version=f"shadowtee {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"shadowtee.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"shadowtee.commands.{name}":
                raise
            continue
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _command=mod.NAME)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args._run(args))
    except ConfigError as exc:
        print(f"shadowtee {args._command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
