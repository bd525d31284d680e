"""Leader election on a real PostgreSQL (comparator.leader): one holder, failover in bound."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from comparator.leader import PgLeader, plain_pg_url

PG_URL = os.environ.get("SHADOWTEE_TEST_PG_URL")
pytestmark = pytest.mark.skipif(
    PG_URL is None and os.environ.get("SHADOWTEE_REQUIRE_PG") != "1",
    reason="needs SHADOWTEE_TEST_PG_URL (a PostgreSQL to elect on)",
)

KEY = 0x7E57_1EAD  # a key of its own, so tests never fight a running comparator


def _url() -> str:
    assert PG_URL is not None, "SHADOWTEE_REQUIRE_PG=1 but SHADOWTEE_TEST_PG_URL is unset"
    return PG_URL


def test_plain_pg_url_maps_drivers_and_refuses_sqlite() -> None:
    assert plain_pg_url("postgresql+asyncpg://u@h:5432/d") == "postgresql://u@h:5432/d"
    with pytest.raises(ValueError, match="PostgreSQL"):
        plain_pg_url("sqlite:///x.db")


async def test_exactly_one_of_three_leads_and_a_killed_leader_fails_over() -> None:
    leaders = [PgLeader(_url(), key=KEY, interval_s=0.2, timeout_s=1.0) for _ in range(3)]
    try:
        for lead in leaders:
            await lead.step()
        assert sum(lead.is_leader for lead in leaders) == 1
        first = next(lead for lead in leaders if lead.is_leader)
        pid = await first.backend_pid()
        assert pid is not None
        # Kill the leader's session from outside, as a crashed replica's would end.
        killer = PgLeader(_url(), key=KEY + 1)
        await killer.step()
        assert killer._conn is not None
        assert await killer._conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        await killer._drop_conn()
        started = time.monotonic()
        # The old leader notices on its next heartbeat; another wins within the bound.
        deadline = started + first.failover_bound_s + 2.0
        while time.monotonic() < deadline:
            # The survivors poll first, as they would while the dead replica restarts.
            for lead in [lead for lead in leaders if lead is not first] + [first]:
                await lead.step()
            others = [lead for lead in leaders if lead is not first and lead.is_leader]
            if others and not first.is_leader:
                break
            await asyncio.sleep(first.interval_s)
        assert not first.is_leader
        assert sum(lead.is_leader for lead in leaders) == 1
        assert time.monotonic() - started <= first.failover_bound_s + 2.0
    finally:
        for lead in leaders:
            await lead._drop_conn()


async def test_run_releases_the_lock_on_cancel() -> None:
    a = PgLeader(_url(), key=KEY + 2, interval_s=0.1, timeout_s=1.0)
    b = PgLeader(_url(), key=KEY + 2, interval_s=0.1, timeout_s=1.0)
    task = asyncio.create_task(a.run())
    try:
        await asyncio.wait_for(a.wait_leader(), timeout=5)
        assert not await b.step()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not a.is_leader
        assert await b.step()
    finally:
        task.cancel()
        await b._drop_conn()


async def test_a_hung_leader_stops_acting_and_its_session_ends_so_another_leads() -> None:
    """A leader that stops heartbeating (a SIGSTOPped process, a blocked loop) reads as not
    leading after interval + timeout, and the server ends its idle session after twice that,
    freeing the lock: the two windows never overlap."""
    hung = PgLeader(_url(), key=KEY + 3, interval_s=0.2, timeout_s=0.3)
    other = PgLeader(_url(), key=KEY + 3, interval_s=0.2, timeout_s=0.3)
    try:
        assert await hung.step() and hung.is_leader
        assert not await other.step()
        started = time.monotonic()
        # ``hung`` takes no further step from here on.
        while hung.is_leader:
            assert time.monotonic() - started <= hung.failover_bound_s + 0.2
            assert not await other.step()  # nobody else leads while it may still act
            await asyncio.sleep(0.05)
        deadline = started + hung.idle_session_timeout_ms / 1000 + 3.0
        while not await other.step():
            assert not hung.is_leader
            assert time.monotonic() < deadline, "the hung leader's session was never ended"
            await asyncio.sleep(0.1)
        assert time.monotonic() - started >= hung.idle_session_timeout_ms / 1000 - 0.1
        assert not await hung.step()  # it wakes: its session is gone, it does not lead
        assert other.is_leader
    finally:
        await hung._drop_conn()
        await other._drop_conn()
