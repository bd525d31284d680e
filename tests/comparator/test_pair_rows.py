"""Pair rows for the bulk load: the values each driver receives are those an ORM insert would bind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import Dialect

from comparator.measure.normalize import NormalizeConfig, measure
from comparator.store.dialect import PAIRS
from comparator.store.pair_rows import COLUMNS, pair_columns, pair_records, sqlite_utc_text
from comparator.wire import Pair
from tests.comparator.store_support import T0, make_pair

offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-23 * 60, 23 * 60)
)
aware = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets
)


def sqlite_bind(values: list[datetime]) -> list[Any]:
    d = SQLiteDialect_aiosqlite()
    process = PAIRS.c.ts.type.dialect_impl(d).bind_processor(d)
    assert process is not None
    return [process(v) for v in values]


@given(st.lists(aware, min_size=1, max_size=20))
def test_sqlite_utc_text_writes_what_the_utc_column_binds(values: list[datetime]) -> None:
    assert sqlite_utc_text(values) == sqlite_bind(values)


def test_sqlite_utc_text_keeps_whole_seconds_and_offsets() -> None:
    values = [
        T0,
        datetime(2026, 1, 1, 5, 30, 0, 7, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ]
    assert sqlite_utc_text(values) == ["2026-11-22 10:00:00.000000", "2026-01-01 00:00:00.000007"]


@pytest.mark.parametrize("dialect", [SQLiteDialect_aiosqlite(), PGDialect_asyncpg()])
def test_records_hold_each_value_as_its_column_binds_it(dialect: Dialect) -> None:
    dicts = [make_pair(i, "e") for i in range(4)]
    dicts[1] = make_pair(1, "e", cand_outcome="timeout")
    dicts[2]["twin"] = {"outcome": "skipped"}
    batch = [Pair.model_validate(d) for d in dicts]
    cols = pair_columns(
        7, batch, measure(batch, NormalizeConfig()), store_bodies=True, sample_rate=0.5
    )
    records = pair_records(dict(cols), dialect)
    assert len(records) == len(batch)
    for c, name in zip(PAIRS.columns, COLUMNS, strict=True):
        process = c.type.dialect_impl(dialect).bind_processor(dialect)
        expected = [v if v is None or process is None else process(v) for v in cols[name]]
        assert [r[COLUMNS.index(name)] for r in records] == expected, name
    assert {type(r[COLUMNS.index("top1_agree")]) for r in records} <= {bool, type(None)}
    assert records[0][COLUMNS.index("prod_outcome")] == "ok"
    assert type(records[0][COLUMNS.index("prod_outcome")]) is str
    assert records[2][COLUMNS.index("twin_outcome")] == "skipped"


def test_ts_of_a_zone_other_than_utc_is_stored_as_utc() -> None:
    d = make_pair(0, "e", ts=datetime(2026, 11, 22, 12, 0, tzinfo=timezone(timedelta(hours=2))))
    batch = [Pair.model_validate(d)]
    cols = pair_columns(
        1, batch, measure(batch, NormalizeConfig()), store_bodies=False, sample_rate=0
    )
    (row,) = pair_records(cols, SQLiteDialect_aiosqlite())
    assert row[COLUMNS.index("ts")] == "2026-11-22 10:00:00.000000"
    assert datetime(2026, 11, 22, 10, tzinfo=UTC) == batch[0].ts
