"""``shadowtee report``: write the daily divergence report of one experiment (HTML, JSON, Markdown)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from shadowtee.config import ConfigError, load_settings

if TYPE_CHECKING:
    from reports.settings import ReportSettings

NAME = "report"
HELP = "write DIR/report.html, report.json and report.md for one experiment and one day"

__all__ = ["HELP", "NAME", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="database URL (sqlite:///path or postgresql://...)")
    parser.add_argument("--experiment", metavar="NAME", help="experiment name")
    parser.add_argument("--day", metavar="YYYY-MM-DD", help="the calendar day to report on")
    parser.add_argument("--out", metavar="DIR", type=Path, help="output directory (created)")
    parser.add_argument("--policy", metavar="FILE", type=Path, help="verdict policy TOML")
    parser.add_argument("--tz", metavar="ZONE", help="time zone of the day (default UTC)")
    parser.add_argument(
        "--config", metavar="FILE", type=Path, help="TOML file with a [report] table"
    )


def run(args: argparse.Namespace) -> int:
    from reports.settings import ReportSettings

    settings = load_settings(
        ReportSettings,
        section="report",
        overrides={
            "db": args.db,
            "experiment": args.experiment,
            "day": args.day,
            "out": args.out,
            "policy": args.policy,
            "tz": args.tz,
        },
        config_file=args.config,
    )
    _check_db(settings.db)
    return asyncio.run(_report(settings))


def _check_db(db: str) -> None:
    """A report only reads: never create an empty SQLite file for a mistyped path."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(db)
    except Exception:
        raise ConfigError(f"--db: not a database URL: {db!r}") from None
    path = url.database
    is_file_db = url.drivername.startswith("sqlite") and path and path != ":memory:"
    if is_file_db and not Path(str(path)).is_file():
        raise ConfigError(f"--db: no database file at {path}")


async def _report(settings: ReportSettings) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from comparator.exceptions import ComparatorError
    from comparator.store.store import Store
    from reports import ReportError, write_report

    try:
        store = await Store.open(settings.db, upgrade=False)
    except ComparatorError as exc:
        raise ConfigError(str(exc) if str(exc).startswith("--db") else f"--db: {exc}") from None
    try:
        paths = await write_report(
            store,
            settings.experiment,
            settings.day,
            settings.out,
            policy=settings.policy,
            tz=settings.tz,
        )
    except ReportError as exc:
        raise ConfigError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise ConfigError(f"--db: cannot read the database: {type(exc).__name__}") from None
    finally:
        await store.close()
    for path in (paths.html, paths.json, paths.markdown):
        print(path)
    return 0
