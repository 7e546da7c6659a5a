"""turnstore behind PgBouncer in transaction pooling mode (PgBouncer 1.18, as Debian ships).

In transaction pooling a client's consecutive transactions may run on different server
sessions: nothing that lives in a session (a prepared statement, a session advisory lock)
survives from one transaction to the next.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from faults.cluster import PgBouncer
from faults.conftest import FaultDatabase
from faults.invariants import assert_clean, assert_typed, count_turns
from faults.workload import TurnChat, run_turns
from turnstore.errors import (
    GenerationInProgressError,
    NotLatestTurnError,
    PreparedStatementsLostError,
    TurnStoreError,
)
from turnstore.lifecycle import MutationResult, TurnLifecycle
from turnstore.postgres import AdvisoryLockElection, PostgresStore, advisory_lock_key
from turnstore.watchdog import OrphanWatchdog

pytestmark = pytest.mark.faults

TURNS = 300
CONCURRENCY = 20
WORKLOAD_SECS = 90.0
MIGRATE_SECS = 30.0


@asynccontextmanager
async def unprepared_store(dsn: str, *, max_size: int = 10) -> AsyncIterator[PostgresStore]:
    """The setup docs/deploying.md (*Poolers*) gives for a transaction pooler: no prepared
    statements, no LISTEN (finalize signals poll instead)."""
    store = await PostgresStore.open(
        dsn, max_size=max_size, prepare_threshold=None, notifications=False
    )
    async with store:
        yield store


async def test_a_store_that_prepares_fails_typed_through_pgbouncer(
    pgbouncer: PgBouncer, fault_db: FaultDatabase
) -> None:
    """psycopg's default (prepare after five uses) cannot work behind transaction pooling;
    what fails says so, typed and not retryable, and names the setting to change."""
    store = await PostgresStore.open(fault_db.via(pgbouncer), max_size=10, notifications=False)
    async with store:
        report = await run_turns(
            TurnLifecycle(store), TURNS, concurrency=CONCURRENCY, timeout=WORKLOAD_SECS
        )
    print(f"\npsycopg's default through PgBouncer: {report.summary()}")  # for the docs
    assert report.completed < TURNS, report.summary()
    assert report.errors, report.summary()
    untyped = [e for e in report.errors if not isinstance(e, TurnStoreError)]
    assert not untyped, report.summary()
    lost = [e for e in report.errors if isinstance(e, PreparedStatementsLostError)]
    assert lost, report.summary()
    assert all(not e.retryable and "prepare_threshold=None" in str(e) for e in lost)


async def test_store_without_prepared_statements_runs_300_turns_through_pgbouncer(
    pgbouncer: PgBouncer, fault_db: FaultDatabase
) -> None:
    async with unprepared_store(fault_db.via(pgbouncer)) as store:
        report = await run_turns(
            TurnLifecycle(store), TURNS, concurrency=CONCURRENCY, timeout=WORKLOAD_SECS
        )
    assert report.completed == TURNS, report.summary()


async def test_migrate_from_five_tasks_through_pgbouncer_finishes(
    pgbouncer: PgBouncer, empty_db: FaultDatabase
) -> None:
    async with unprepared_store(empty_db.via(pgbouncer), max_size=5) as store:
        done, pending = await asyncio.wait(
            [asyncio.ensure_future(store.migrate()) for _ in range(5)], timeout=MIGRATE_SECS
        )
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)
        errors = [repr(t.exception()) for t in done if t.exception() is not None]
        verdict = (
            f"after {MIGRATE_SECS} s: {len(pending)} of 5 migrations still waiting, "
            f"{len(errors)} failed: {errors[:2]}"
        )
        assert not pending, verdict
        assert not errors, verdict
        status = await asyncio.wait_for(store.check_schema(), timeout=10)
        assert status.current
        # Nothing is left behind on any server session: no advisory lock is held.
        async with store.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            assert await cur.fetchone() == (0,)


async def test_two_watchdogs_through_pgbouncer_elect_exactly_one_leader(
    pgbouncer: PgBouncer, fault_db: FaultDatabase
) -> None:
    """The store's default election (a lease row) holds behind transaction pooling: in
    every one of 20 samples exactly one watchdog leads, and a stopped leader hands over."""
    async with (
        unprepared_store(fault_db.via(pgbouncer)) as first_store,
        unprepared_store(fault_db.via(pgbouncer)) as second_store,
    ):
        first, second = OrphanWatchdog(first_store), OrphanWatchdog(second_store)
        try:
            for _ in range(20):
                won = await asyncio.wait_for(
                    asyncio.gather(first.elect(), second.elect()), timeout=30
                )
                assert won.count(True) == 1, f"leaders this round: {won}"
                assert [first.is_leader, second.is_leader].count(True) == 1
            leader, follower = (first, second) if first.is_leader else (second, first)
            await asyncio.wait_for(leader.stop(), timeout=30)
            assert await asyncio.wait_for(follower.elect(), timeout=30)
            assert not await asyncio.wait_for(leader.elect(), timeout=30)
        finally:
            await asyncio.wait_for(asyncio.gather(first.stop(), second.stop()), timeout=30)


async def test_the_advisory_lock_election_through_pgbouncer_elects_two_leaders(
    pgbouncer: PgBouncer, fault_db: FaultDatabase
) -> None:
    """Why the lease is the default: the session-bound advisory-lock election, behind
    transaction pooling, lets a second client share the leader's server session and its
    re-entrant lock (a documented limitation: direct connections only)."""
    key = advisory_lock_key(fault_db.schema)

    async def connect() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            fault_db.via(pgbouncer), autocommit=True, prepare_threshold=None
        )

    first = AdvisoryLockElection(connect, key)
    second = AdvisoryLockElection(connect, key)
    try:
        both = 0
        for _ in range(20):
            won = await asyncio.wait_for(
                asyncio.gather(first.acquire(), second.acquire()), timeout=30
            )
            both += won.count(True) == 2
        assert both > 0, "expected the pooler to share the lock's session at least once"
    finally:
        await asyncio.wait_for(asyncio.gather(first.release(), second.release()), timeout=30)


CHATS = 30
ROUNDS = 10  # turns per chat: the first, then nine won retries
RACERS = 5


async def test_racing_retries_watchdogs_and_migrations_through_pgbouncer(
    pgbouncer: PgBouncer, empty_db: FaultDatabase
) -> None:
    """Everything at once through one PgBouncer: two instances migrate an empty database
    at the same time and each runs a watchdog; then 30 chats each go through 10 turns, every
    retry raced by 5 requests of the same user. Exactly one racer wins each round, the others
    are refused typed, and 300 turns are written, none half-finished."""
    dsn = empty_db.via(pgbouncer)
    async with unprepared_store(dsn) as first, unprepared_store(dsn) as second:
        await asyncio.wait_for(asyncio.gather(first.migrate(), second.migrate()), timeout=60)
        watchdogs = [OrphanWatchdog(first), OrphanWatchdog(second)]
        for watchdog in watchdogs:
            await watchdog.start()
        stores = (first, second)
        refusals: list[BaseException] = []

        async def chat_life(index: int) -> int:
            chat = TurnChat()
            lifecycle = TurnLifecycle(stores[index % 2])
            outcome = await lifecycle.begin_turn(chat.scope, chat.params())
            assert outcome.turn is not None
            assert (await lifecycle.complete_turn(chat.scope, outcome.turn, uuid.uuid4())).won
            request_id = outcome.turn.request_id
            wins = 1
            for _ in range(ROUNDS - 1):
                racers = [
                    TurnLifecycle(stores[(index + n) % 2]).retry_turn(
                        chat.scope, chat.tenant_id, chat.chat_id, request_id, chat.user_id
                    )
                    for n in range(RACERS)
                ]
                results = await asyncio.gather(*racers, return_exceptions=True)
                won = [r for r in results if isinstance(r, MutationResult)]
                refusals.extend(r for r in results if isinstance(r, BaseException))
                assert len(won) == 1, results
                new_turn = won[0].new_turn
                assert new_turn is not None
                final = await lifecycle.complete_turn(chat.scope, new_turn, uuid.uuid4())
                assert final.won
                request_id = new_turn.request_id
                wins += 1
            return wins

        try:
            wins = await asyncio.wait_for(
                asyncio.gather(*(chat_life(i) for i in range(CHATS))), timeout=WORKLOAD_SECS
            )
            assert [w.is_leader for w in watchdogs].count(True) == 1
        finally:
            await asyncio.wait_for(asyncio.gather(*(w.stop() for w in watchdogs)), timeout=30)
        assert sum(wins) == CHATS * ROUNDS
        assert_typed(refusals)
        assert {type(r) for r in refusals} <= {NotLatestTurnError, GenerationInProgressError}
        assert len(refusals) == CHATS * (ROUNDS - 1) * (RACERS - 1)
        assert await count_turns(empty_db.dsn) == CHATS * ROUNDS
        assert await count_turns(empty_db.dsn, "deleted_at IS NULL") == CHATS
        assert await count_turns(empty_db.dsn, "state <> 'completed'") == 0
        await assert_clean(first, empty_db.dsn)
        await assert_clean(second, empty_db.dsn)
