"""Fixtures shared by the proxy's functional tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """One client session per test, closed after it (the forwarding tests use their own)."""
    async with aiohttp.ClientSession() as session:
        yield session
