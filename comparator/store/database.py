"""Engines and migrations for the comparator database (SQLite via aiosqlite, PostgreSQL via asyncpg).

``async_url`` maps the URLs people type to async drivers; ``make_engine`` sets SQLite up for one
writer among many readers (WAL, busy timeout, writers that take the lock up front);
``upgrade_database`` applies the Alembic migrations shipped inside the package
(``comparator/store/migrations``), so an installed comparator migrates itself with no ``alembic.ini``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from comparator.exceptions import StoreError

__all__ = ["async_url", "make_engine", "migration_state", "upgrade_database"]


def async_url(url: str) -> str:
    """Map a plain database URL to its async driver.

    ``sqlite:///p`` → ``sqlite+aiosqlite:///p``; ``postgresql://…`` (or ``postgres://``) →
    ``postgresql+asyncpg://…``; a URL that already names a driver passes unchanged.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with the URL in it
        raise StoreError(f"--db: not a database URL: {url!r}") from exc
    if parsed.drivername == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if parsed.drivername == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    if parsed.drivername in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        return url
    raise StoreError(f"--db: unsupported database {parsed.drivername!r} (use sqlite or postgresql)")


# -- migrations ---------------------------------------------------------------------------------


def _alembic_config() -> Any:
    # lazy: importing alembic logs at INFO, noise in a process that never migrates
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "comparator.store:migrations")
    return cfg


def _upgrade_sync(connection: Any) -> None:
    from alembic import command  # lazy: see _alembic_config

    cfg = _alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _current_and_head_sync(connection: Any) -> tuple[str | None, str | None]:
    from alembic.runtime.migration import MigrationContext  # lazy: see _alembic_config
    from alembic.script import ScriptDirectory

    current = MigrationContext.configure(connection).get_current_revision()
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    return current, head


#: The advisory lock key of migrations ("SHADOWMG"; the leader's is "SHADOWTE").
MIGRATION_LOCK_KEY = 0x5348_4144_4F57_4D47


async def upgrade_database(engine: AsyncEngine) -> None:
    """Apply every pending migration (idempotent: at head it does nothing).

    On PostgreSQL the migrations run under a transaction-level advisory lock, so replicas that
    start at once on a new database take turns: the first migrates, the others find it at head.
    """
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        await conn.run_sync(_upgrade_sync)


# -- engine -------------------------------------------------------------------------------------


def make_engine(url: str) -> AsyncEngine:
    aurl = async_url(url)
    if not aurl.startswith("sqlite"):
        return create_async_engine(
            aurl,
            pool_size=10,
            max_overflow=10,
            pool_pre_ping=True,
            # A generic plan cached while a new database's tables are empty and unanalysed keeps
            # a lookup by key (the hourly rows) off its index until autovacuum's first ANALYZE.
            # Planning each statement for its parameters costs little beside that.
            connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan"}},
        )
    memory = make_url(aurl).database in (None, "", ":memory:")
    engine = create_async_engine(
        aurl,
        connect_args={"timeout": 30},
        **({"poolclass": StaticPool} if memory else {}),
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, say when a transaction begins (see _on_begin).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A writer takes the write lock up front: a deferred transaction that reads and then
        # writes fails with SQLITE_BUSY at once when another writer got there first.
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


async def migration_state(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """(current revision, head revision) of the database behind ``engine``."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current_and_head_sync)
