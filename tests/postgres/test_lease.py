"""The watchdog's lease election on PostgreSQL, with real concurrent stores: exactly one
leader among many, takeover only after the lease lapsed, a partitioned leader that stops
before anyone else can start, release at once on stop."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from lifecycle_support import Chat
from turnstore.lifecycle import TurnLifecycle
from turnstore.model import TurnState
from turnstore.postgres import (
    DEFAULT_LEASE_SECS,
    WATCHDOG_LEASE_NAME,
    LeaseElection,
    PostgresStore,
)
from turnstore.testing.backends import PostgresHarness
from turnstore.watchdog import OrphanWatchdog, WatchdogSettings

# Short leases, so expiry is seen within a test.
LEASE = 1.0
RENEW = 0.2
MARGIN = 0.2


class Cuttable:
    """A store's connection source that a test can cut: ``fail`` (every connection attempt
    raises, as with a lost network) or ``hang`` (attempts never return, as on a silent
    partition)."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.mode = "ok"

    def __call__(self) -> Any:
        return self._connection()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self.mode == "fail":
            raise psycopg.OperationalError("connection cut by the test")
        if self.mode == "hang":
            await asyncio.Event().wait()
        async with self.store.connection() as conn:
            yield conn


def election(store: PostgresStore, **kwargs: Any) -> LeaseElection:
    timings: dict[str, Any] = {"lease_secs": LEASE, "renew_interval_secs": RENEW}
    timings["margin_secs"] = MARGIN
    timings.update(kwargs)
    return LeaseElection(store.connection, store.schema, **timings)


async def lease_row(store: PostgresStore) -> tuple[uuid.UUID, float] | None:
    """The lease's holder and seconds left until it expires, by the database's clock."""
    async with store.connection() as conn:
        cur = await conn.execute(
            "SELECT holder, extract(epoch FROM expires_at - clock_timestamp())::float8"
            " FROM turnstore.watchdog_leases WHERE name = %s",
            (WATCHDOG_LEASE_NAME,),
        )
        row = await cur.fetchone()
    return None if row is None else (row[0], float(row[1]))


@pytest.fixture
async def stores(turnstore_pg_dsn: str) -> AsyncIterator[list[PostgresStore]]:
    """Five stores with pools of their own: five app instances on one database."""
    opened = [await PostgresStore.open(turnstore_pg_dsn, max_size=3) for _ in range(5)]
    try:
        yield opened
    finally:
        for store in opened:
            await store.close()


async def test_the_default_election_is_a_lease_with_renewal_well_inside_it(
    stores: list[PostgresStore],
) -> None:
    default = stores[0].leader_election()
    assert isinstance(default, LeaseElection)
    assert default.lease_secs == DEFAULT_LEASE_SECS
    assert default.renew_interval_secs * 2 <= default.lease_secs - default.margin_secs


async def test_exactly_one_leader_among_five_concurrent_stores(
    stores: list[PostgresStore],
) -> None:
    elections = [election(s) for s in stores]
    try:
        for _ in range(20):
            won = await asyncio.wait_for(
                asyncio.gather(*(e.acquire() for e in elections)), timeout=30
            )
            assert won.count(True) == 1, won
            assert [e.is_leader for e in elections].count(True) == 1
            leader = elections[won.index(True)]
            row = await lease_row(stores[0])
            assert row is not None
            assert row[0] == leader.holder
            # The leader gives way; the next round elects again from scratch.
            await leader.release()
            assert await lease_row(stores[0]) is None
    finally:
        await asyncio.gather(*(e.release() for e in elections))


async def test_the_leader_renews_in_the_background_and_keeps_leading(
    stores: list[PostgresStore],
) -> None:
    leader, other = election(stores[0]), election(stores[1])
    try:
        assert await leader.acquire()
        for _ in range(4 * int(LEASE / RENEW)):  # four lease lengths
            await asyncio.sleep(RENEW)
            assert leader.is_leader
            assert not await other.acquire()
        row = await lease_row(stores[0])
        assert row is not None
        assert row[0] == leader.holder
        assert LEASE - 2 * RENEW < row[1] <= LEASE
    finally:
        await leader.release()
        await other.release()


@pytest.mark.parametrize("cut", ["fail", "hang"])
async def test_a_cut_off_leader_stops_before_another_takes_over(
    stores: list[PostgresStore], cut: str
) -> None:
    """A leader that can no longer renew (its connections fail, or hang) drops leadership
    by its own clock before the database lets another instance take the lease: at no
    moment do two instances consider themselves leader."""
    source = Cuttable(stores[0])
    leader = LeaseElection(
        source, stores[0].schema, lease_secs=LEASE, renew_interval_secs=RENEW, margin_secs=MARGIN
    )
    follower = election(stores[1])
    try:
        assert await leader.acquire()
        source.mode = cut
        loop = asyncio.get_running_loop()
        cut_at = loop.time()
        overlap: list[float] = []
        leader_stopped_at: float | None = None
        taken_at: float | None = None
        while taken_at is None and loop.time() - cut_at < 10 * LEASE:
            if not leader.is_leader and leader_stopped_at is None:
                leader_stopped_at = loop.time()
            if await follower.acquire():
                taken_at = loop.time()
            if leader.is_leader and follower.is_leader:
                overlap.append(loop.time() - cut_at)
            await asyncio.sleep(0.02)
        assert not overlap, f"two leaders at {overlap[:3]} s after the cut"
        assert leader_stopped_at is not None
        assert taken_at is not None, "the follower never took the lapsed lease"
        assert leader_stopped_at <= taken_at
        # The follower waits out the lease: not before it lapsed, not much after.
        assert LEASE - RENEW - MARGIN <= taken_at - cut_at <= LEASE + 2.0
        assert not leader.is_leader
        print(
            f"\nlease {LEASE} s, cut ({cut}): the leader stopped after "
            f"{leader_stopped_at - cut_at:.2f} s, the follower took over after "
            f"{taken_at - cut_at:.2f} s"
        )
    finally:
        source.mode = "ok"
        await follower.release()
        await leader.release()


async def test_the_leader_leads_only_until_sent_plus_lease_minus_margin(
    stores: list[PostgresStore],
) -> None:
    """Leadership by the leader's own clock: from the reading taken before the take was
    sent, for the lease minus the margin, whatever the database says meanwhile."""
    now = [1000.0]
    leader = LeaseElection(stores[0].connection, stores[0].schema, clock=lambda: now[0])
    try:
        assert await leader.acquire()
        until = 1000.0 + leader.lease_secs - leader.margin_secs
        now[0] = until - 0.001
        assert leader.is_leader
        now[0] = until
        assert not leader.is_leader
        # The row still names it (the database's lease has not lapsed): renewing works.
        assert await leader.acquire()
        assert leader.is_leader
    finally:
        await leader.release()


async def test_a_stopped_leader_releases_at_once(stores: list[PostgresStore]) -> None:
    # Default (30 s) lease: a takeover within the test can only come from the release.
    leader = stores[0].leader_election()
    follower = stores[1].leader_election()
    try:
        assert await leader.acquire()
        assert not await follower.acquire()
        began = time.monotonic()
        await leader.release()
        assert not leader.is_leader
        assert await follower.acquire()
        handover = time.monotonic() - began
        assert handover < 5.0
        print(f"\nrelease to takeover: {handover * 1000:.1f} ms (lease 30 s)")
        assert not await leader.acquire()
    finally:
        await follower.release()
        await leader.release()


async def test_a_release_leaves_another_holders_lease_alone(
    stores: list[PostgresStore],
) -> None:
    first, second = election(stores[0]), election(stores[1])
    try:
        assert await first.acquire()
        assert not await second.acquire()
        await second.release()  # never led: must not delete the leader's row
        row = await lease_row(stores[0])
        assert row is not None
        assert row[0] == first.holder
        assert first.is_leader
    finally:
        await first.release()


async def test_watchdog_loops_hand_over_when_the_leader_stops(
    stores: list[PostgresStore],
) -> None:
    """Two running watchdogs on the default election: one leads, the other takes over as
    soon as the first stops, and an orphan is failed exactly once."""
    settings = WatchdogSettings(orphan_timeout_secs=60, scan_interval_secs=0.05)
    first = OrphanWatchdog(stores[0], settings)
    second = OrphanWatchdog(stores[1], settings)
    await first.start()
    try:
        for _ in range(200):
            if first.is_leader:
                break
            await asyncio.sleep(0.01)
        await second.start()
        await asyncio.sleep(0.3)
        assert [first.is_leader, second.is_leader] == [True, False]
        await first.stop()
        for _ in range(200):
            if second.is_leader:
                break
            await asyncio.sleep(0.01)
        assert second.is_leader
        assert not first.is_leader
        chat = Chat()
        started = await TurnLifecycle(stores[2]).begin_turn(chat.scope, chat.params())
        assert started.turn is not None
        await PostgresHarness(store=stores[2]).advance_time(61)
        for _ in range(300):
            async with stores[2].connection() as conn:
                row = await stores[2].turns.find_by_chat_and_request_id(
                    conn, chat.scope, chat.tenant_id, chat.chat_id, started.turn.request_id
                )
            assert row is not None
            if row.state is TurnState.FAILED:
                break
            await asyncio.sleep(0.02)
        assert row is not None
        assert row.state is TurnState.FAILED
    finally:
        await first.stop()
        await second.stop()
