"""Fixtures shared by every test package.

PostgreSQL tests use a real server: ``SHADOWTEE_TEST_PG_URL`` (``.ci/run`` sets it to the
machine's server) or, when unset, ``postgresql://postgres@127.0.0.1:5432/postgres`` if it answers.
Each test session gets its own throw-away database, dropped at the end. Without a server those
tests skip with the reason.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _pg_admin_url() -> str:
    return os.environ.get("SHADOWTEE_TEST_PG_URL", DEFAULT_PG_ADMIN_URL)


async def _pg_exec(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL (``postgresql://…``) of a fresh database on the real PostgreSQL server."""
    admin = _pg_admin_url()
    name = f"shadowtee_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_pg_exec(admin, f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError) as exc:
        if os.environ.get("SHADOWTEE_REQUIRE_PG"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {admin}: {exc}")
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# Property tests explore freely on a developer's machine; in CI (CI=true) they replay the same
# derandomized examples, so a red build always reproduces.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")
