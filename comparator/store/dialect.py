"""The SQL the store sends past SQLAlchemy, in both drivers' dialects, and their errors.

The ingest write path talks to the driver (asyncpg or aiosqlite) directly after its lock: the
statements are here, each as one :class:`Sql` with its PostgreSQL and its SQLite text, with how
their parameters are bound (:func:`bind_array`, :func:`bind_stamps`) and sent (:func:`fetch`,
:func:`executemany`). A driver's error becomes a :class:`~comparator.exceptions.StoreError` through
:func:`driver_error` (the one mapper, as SQLAlchemy would have wrapped it), which the API answers
with 503; a row whose key is stored already is its :class:`~comparator.exceptions.DuplicateKey`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar, cast

import asyncpg
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from comparator.exceptions import DuplicateKey, StoreError
from comparator.store.models import (
    ExperimentRow,
    HourlyAggregateRow,
    MemorySampleRow,
    PairRow,
    QuarantineRow,
    QuarantineTallyRow,
    VerdictRow,
    VerdictStateRow,
)
from comparator.store.pair_rows import COLUMNS, sqlite_utc_text

__all__ = [
    "DRIVER_ERRORS",
    "EXP",
    "HOURS",
    "MEM",
    "PAIRS",
    "QUARANTINE",
    "TALLY",
    "VERDICTS",
    "VSTATE",
    "Sql",
    "bind_array",
    "bind_stamps",
    "driver_call",
    "driver_connection",
    "driver_error",
    "executemany",
    "fetch",
    "insert_for",
    "read_stamp",
]

T = TypeVar("T")
# What a driver raises for a statement it refuses or a connection it lost.
DRIVER_ERRORS = (sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError)
SQLITE_INSERT = f"INSERT INTO pairs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
REQUEST_ID = COLUMNS.index("request_id")


class Sql(NamedTuple):
    """One statement in each driver's dialect: asyncpg's ``$n`` and arrays, sqlite3's ``?`` and
    JSON arrays read by ``json_each`` (see :func:`bind_array`)."""

    postgresql: str
    sqlite: str


_EXP_COLUMNS = "id, name, started_at, last_pair_at, prod_version, cand_version, task"
LOCK = Sql(
    f"SELECT {_EXP_COLUMNS} FROM experiments WHERE name = ANY($1::varchar[]) "
    "ORDER BY name FOR UPDATE",
    f"SELECT {_EXP_COLUMNS} FROM experiments WHERE name IN (SELECT value FROM json_each(?)) "
    "ORDER BY name",
)
STORED = Sql(
    "SELECT request_id FROM pairs WHERE experiment_id = $1 AND request_id = ANY($2::varchar[])",
    "SELECT request_id FROM pairs WHERE experiment_id = ? "
    "AND request_id IN (SELECT value FROM json_each(?))",
)
HOURS_SELECT = Sql(
    "SELECT hour, data FROM hourly_aggregates WHERE experiment_id = $1 "
    "AND hour = ANY($2::timestamptz[]) ORDER BY hour FOR UPDATE",
    "SELECT hour, data FROM hourly_aggregates WHERE experiment_id = ? "
    "AND hour IN (SELECT value FROM json_each(?)) ORDER BY hour",
)
HOURS_INSERT = Sql(
    "INSERT INTO hourly_aggregates (experiment_id, hour, data, updated_at) "
    "VALUES ($1, $2, $3::jsonb, $4)",
    "INSERT INTO hourly_aggregates (experiment_id, hour, data, updated_at) VALUES (?, ?, ?, ?)",
)
HOURS_UPDATE = Sql(
    "UPDATE hourly_aggregates SET data = $1::jsonb, updated_at = $2 "
    "WHERE experiment_id = $3 AND hour = $4",
    "UPDATE hourly_aggregates SET data = ?, updated_at = ? WHERE experiment_id = ? AND hour = ?",
)
_EXP_SET = (
    "UPDATE experiments SET n_pairs = n_pairs + {}, started_at = {}, last_pair_at = {}, "
    "task = {}, prod_version = {}, cand_version = {} WHERE id = {}"
)
EXP_UPDATE = Sql(_EXP_SET.format(*(f"${i}" for i in range(1, 8))), _EXP_SET.format(*"???????"))
EXP = cast(Table, ExperimentRow.__table__)
PAIRS = cast(Table, PairRow.__table__)
HOURS = cast(Table, HourlyAggregateRow.__table__)
QUARANTINE = cast(Table, QuarantineRow.__table__)
MEM = cast(Table, MemorySampleRow.__table__)
VERDICTS = cast(Table, VerdictRow.__table__)
VSTATE = cast(Table, VerdictStateRow.__table__)
TALLY = cast(Table, QuarantineTallyRow.__table__)
_PG_DIALECT: Dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
_PG_ARRAYS = ", ".join(
    f"${i}::{c.type.compile(dialect=_PG_DIALECT)}[]" for i, c in enumerate(PAIRS.columns, start=1)
)
INSERT_MISSING = Sql(
    f"INSERT INTO pairs ({', '.join(COLUMNS)}) SELECT * FROM unnest({_PG_ARRAYS}) "
    "ON CONFLICT DO NOTHING RETURNING request_id",
    SQLITE_INSERT,
)


def insert_for(dialect: str, table: Any) -> Any:
    """An INSERT of the dialect that knows ``ON CONFLICT`` (PostgreSQL, else SQLite)."""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


async def driver_connection(conn: AsyncConnection) -> Any:
    """The driver's own connection (aiosqlite or asyncpg) under ``conn``, in its transaction.

    SQLite's transaction is open from ``conn.begin()`` (``BEGIN IMMEDIATE``, see
    comparator.store.database). SQLAlchemy's asyncpg adapter sends its BEGIN only with the first
    statement it executes itself: until then a statement sent on the driver would run, and
    commit, on its own — no lock held, no batch atomic — so one is sent through the adapter first.
    """
    driver: Any = (await conn.get_raw_connection()).driver_connection
    if conn.dialect.name == "postgresql" and not driver.is_in_transaction():
        await conn.exec_driver_sql("SELECT 1")
    return driver


def driver_error(exc: Exception, what: str) -> StoreError:
    """The :class:`StoreError` for a driver's error (one of :data:`DRIVER_ERRORS`) in ``what``:
    :class:`DuplicateKey` for a row whose key is stored already, as SQLAlchemy would have wrapped
    it."""
    duplicate = isinstance(exc, asyncpg.UniqueViolationError) or (
        isinstance(exc, sqlite3.IntegrityError)
        and exc.sqlite_errorname == "SQLITE_CONSTRAINT_PRIMARYKEY"
    )
    return (DuplicateKey if duplicate else StoreError)(f"{what} refused: {exc}")


async def driver_call(call: Awaitable[T], what: str) -> T:
    """Await a statement sent past SQLAlchemy, its driver's errors raised through
    :func:`driver_error` (the failure the caller answers with 503)."""
    try:
        return await call
    except DRIVER_ERRORS as exc:
        raise driver_error(exc, what) from exc


async def fetch(conn: AsyncConnection, sql: Sql, *args: Any, what: str) -> list[Any]:
    """Rows of ``sql`` on the driver's connection, inside the open transaction."""
    raw = await driver_connection(conn)
    if conn.dialect.name == "postgresql":
        return list(await driver_call(raw.fetch(sql.postgresql, *args), what))
    return list(await driver_call(raw.execute_fetchall(sql.sqlite, args), what))


async def executemany(
    conn: AsyncConnection, sql: Sql, rows: Sequence[tuple[Any, ...]], what: str
) -> None:
    raw = await driver_connection(conn)
    text = sql.postgresql if conn.dialect.name == "postgresql" else sql.sqlite
    await driver_call(raw.executemany(text, rows), what)


def bind_array(dialect: str, values: Sequence[Any]) -> Any:
    """A list bound as one parameter: an array on PostgreSQL, JSON text on SQLite."""
    return list(values) if dialect == "postgresql" else json.dumps(list(values))


def bind_stamps(dialect: str, values: Sequence[datetime | None]) -> list[Any]:
    """Aware datetimes as the driver takes them for a UTC column (naive UTC text on SQLite)."""
    if dialect == "postgresql":
        return list(values)
    present = [v for v in values if v is not None]
    text = iter(sqlite_utc_text(present))
    return [None if v is None else next(text) for v in values]


def read_stamp(dialect: str, value: Any) -> Any:
    """A UTC column as the driver returns it, as an aware datetime (see :func:`bind_stamps`)."""
    if dialect == "postgresql" or value is None:
        return value
    return datetime.fromisoformat(value).replace(tzinfo=UTC)
