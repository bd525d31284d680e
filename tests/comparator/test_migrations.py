"""Migrations: from an empty database to head, idempotent, and the same schema as the models."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import inspect

from comparator.store.models import Base
from comparator.store.store import Store
from comparator.wire import Pair
from tests.comparator.store_support import (  # noqa: F401 - fixture
    db_url_fixture,
    make_pair,
)
from tests.support.pg import fresh_database

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
            assert current == head == "0006"
            assert await store.ready()
            async with store.engine.connect() as conn:
                tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            assert tables >= TABLES | {"alembic_version"}
        finally:
            await store.close()


def _not_a_partition(name: str | None, type_: str, parent_names: Any) -> bool:
    """The day partitions of ``pairs`` on PostgreSQL (comparator.store.partitions) are no model's."""
    return not (type_ == "table" and name is not None and name.startswith("pairs_"))


async def test_migrated_schema_matches_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store = await Store.open(db_url)
    try:
        async with store.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(
                    MigrationContext.configure(c, opts={"include_name": _not_a_partition}),
                    Base.metadata,
                )
            )
    finally:
        await store.close()
    assert diff == []


@pytest.fixture(name="empty_db_url", params=["sqlite", "postgresql"])
def empty_db_url_fixture(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A database no test has migrated yet (``pg_url``'s is shared by the session)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.db"
        return
    server = str(request.getfixturevalue("pg_url")).rsplit("/", 1)[0]
    yield from fresh_database(server, "shadowtee_mig")


async def test_0002_keeps_the_pairs_of_an_0001_database_and_drops_their_foreign_key(
    empty_db_url: str,
) -> None:
    db_url = empty_db_url
    from alembic import command

    from comparator.store.database import _alembic_config, make_engine

    def upgrade_to(connection: Any, revision: str) -> None:
        cfg = _alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to, "0001")
    finally:
        await engine.dispose()
    store = await Store.open(db_url, upgrade=False)
    try:
        assert (await store.migration_state())[0] == "0001"
        exp = "migrated"
        await store.ingest([Pair.model_validate(make_pair(i, exp)) for i in range(30)])
        before = [(h, a.to_json()) for h, a in await store.hourly_aggregates(exp)]
    finally:
        await store.close()
    store = await Store.open(db_url)  # upgrades to head
    try:
        assert await store.migration_state() == ("0006", "0006")
        assert await store.count_pairs(exp) == 30
        assert [(h, a.to_json()) for h, a in await store.hourly_aggregates(exp)] == before
        async with store.engine.connect() as conn:
            keys = await conn.run_sync(lambda c: inspect(c).get_foreign_keys("pairs"))
            indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("pairs"))
        assert keys == []
        assert [i["name"] for i in indexes] == ["ix_pairs_experiment_ts"]
        # Ingest goes on as before: a retried batch stores nothing twice.
        result = await store.ingest([Pair.model_validate(make_pair(i, exp)) for i in range(20, 40)])
        assert (result.inserted, result.duplicates) == (10, 10)
    finally:
        await store.close()


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
        assert "revision 0006 (head 0006)" in out.stdout


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


async def test_postgresql_connections_plan_each_statement_for_its_own_parameters(
    pg_url: str,
) -> None:
    """A plan cached while a new database's ``pairs`` was empty and unanalysed kept the stored-id
    lookup on the (experiment_id, ts) index, filtering every pair of the experiment per batch,
    until autovacuum's first ANALYZE: 330 µs a pair instead of 11 on this machine. Each execution
    is planned for the table as it is, with the batch's own ids."""
    from sqlalchemy import text

    store = await Store.open(pg_url)
    try:
        async with store.engine.connect() as conn:
            mode = (await conn.execute(text("SHOW plan_cache_mode"))).scalar()
    finally:
        await store.close()
    assert mode == "force_custom_plan"


@pytest.fixture(name="new_pg_url")
def new_pg_url_fixture(pg_url: str) -> Iterator[str]:
    """A PostgreSQL database no one migrated (replicas share PostgreSQL, never a SQLite file)."""
    yield from fresh_database(pg_url.rsplit("/", 1)[0], "shadowtee_mig")


async def test_replicas_starting_at_once_on_a_new_database_all_come_up(new_pg_url: str) -> None:
    """Three stores opened concurrently on a database no one migrated: each reaches head (the
    migrations take turns under an advisory lock)."""
    stores = await asyncio.gather(*(Store.open(new_pg_url) for _ in range(3)))
    try:
        for store in stores:
            assert await store.migration_state() == ("0006", "0006")
    finally:
        for store in stores:
            await store.close()
