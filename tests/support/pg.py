"""A PostgreSQL database of a test's own, on the server the suite uses."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

__all__ = ["fresh_database"]


async def _execute(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def fresh_database(server: str, prefix: str = "shadowtee_t") -> Iterator[str]:
    """Create an empty database on ``server`` (``postgresql://user@host:port``), yield its URL,
    drop it afterwards (for a fixture: ``yield from fresh_database(...)``)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = f"{server}/postgres"
    asyncio.run(_execute(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server}/{name}"
    finally:
        asyncio.run(_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
