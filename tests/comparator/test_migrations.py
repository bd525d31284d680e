"""Migrations: from an empty database to head, idempotent, and the same schema as the models."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import inspect

from comparator.models import Base
from comparator.store import Store
from tests.comparator.store_support import db_url_fixture  # noqa: F401 - fixture

TABLES = {
    "experiments",
    "pairs",
    "hourly_aggregates",
    "memory_samples",
    "verdicts",
    "verdict_state",
}


async def test_upgrade_from_empty_reaches_head_and_is_idempotent(db_url: str) -> None:
    for _ in range(2):  # the second open finds the database at head and changes nothing
        store = await Store.open(db_url)
        try:
            current, head = await store.migration_state()
            assert current == head == "0001"
            assert await store.ready()
            async with store.engine.connect() as conn:
                tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            assert tables >= TABLES | {"alembic_version"}
        finally:
            await store.close()


async def test_migrated_schema_matches_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store = await Store.open(db_url)
    try:
        async with store.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
    finally:
        await store.close()
    assert diff == []


async def test_open_without_upgrade_is_not_ready_on_an_empty_database(tmp_path: object) -> None:
    store = await Store.open(f"sqlite:///{tmp_path}/empty.db", upgrade=False)
    try:
        assert await store.ready() is False
    finally:
        await store.close()


def test_db_upgrade_command_migrates_a_new_sqlite_file(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "shadowtee", "db", "upgrade", "--db", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert "revision 0001 (head 0001)" in out.stdout


def test_db_upgrade_command_fails_in_one_line_on_a_bad_url() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shadowtee", "db", "upgrade", "--db", "mysql://h/d"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "shadowtee db: --db: unsupported database 'mysql' (use sqlite or postgresql)"
    ]
