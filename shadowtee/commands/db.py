"""``shadowtee db upgrade``: apply the comparator's database migrations."""

from __future__ import annotations

import argparse
import asyncio
import sys

NAME = "db"
HELP = "database maintenance: `db upgrade --db URL` applies migrations"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["upgrade", "current"],
        help="upgrade: to head; current: print the revision",
    )
    parser.add_argument(
        "--db", required=True, metavar="URL", help="sqlite:///PATH or postgresql://…"
    )


async def _main(url: str, action: str) -> str:
    from comparator.store.store import Store

    store = await Store.open(url, upgrade=action == "upgrade")
    try:
        current, head = await store.migration_state()
    finally:
        await store.close()
    return f"database at revision {current} (head {head})"


def run(args: argparse.Namespace) -> int:
    from comparator.exceptions import StoreError

    try:
        print(asyncio.run(_main(args.db, args.action)))
    except StoreError as exc:
        print(f"shadowtee db: {exc}", file=sys.stderr)
        return 2
    return 0
