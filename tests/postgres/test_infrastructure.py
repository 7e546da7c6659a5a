"""What ``PostgresStore`` does for the infrastructure it runs on (docs/deploying.md): bounded
lock and statement waits set per transaction, prepared statements on or off, dead pooled
connections never handed out, and pool errors that say whose fault they are.

(Server restarts, crashes and PgBouncer are in tests/faults, on a cluster of their own.)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from typing import Any

import psycopg
import pytest

from turnstore import (
    AccessScope,
    CasCompleteParams,
    CreateTurnParams,
    InvalidParameterError,
    LockTimeoutError,
    PoolDeadlockError,
    PoolTimeoutError,
    RequesterType,
    StatementTimeoutError,
    TurnLifecycle,
)
from turnstore.postgres import PostgresStore

ALLOW = AccessScope.allow_all()
#: How long a test lets a call wait before it counts as "waits without bound".
UNBOUNDED_PROBE_SECS = 2.0


class Rollback(Exception):
    """Raised in a transaction block to leave it by rolling back."""


def _params() -> CreateTurnParams:
    return CreateTurnParams(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        chat_id=uuid.uuid4(),
        request_id=uuid.uuid4(),
        requester_type=RequesterType.SYSTEM,
    )


async def _setting(conn: psycopg.AsyncConnection[Any], name: str) -> str:
    cur = await conn.execute("SELECT current_setting(%s)", (name,))
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


# --- timeouts, per transaction -----------------------------------------------------------


async def test_bounds_hold_for_the_transaction_and_end_with_it(turnstore_pg_dsn: str) -> None:
    store = await PostgresStore.open(
        turnstore_pg_dsn, max_size=1, lock_timeout_secs=0.25, statement_timeout_secs=0.5
    )
    async with store:
        params = _params()
        async with store.transaction() as conn:
            assert await _setting(conn, "lock_timeout") == "0"
            await store.turns.find_latest_for_update(conn, ALLOW, params.tenant_id, params.chat_id)
            assert await _setting(conn, "lock_timeout") == "250ms"
            assert await _setting(conn, "statement_timeout") == "500ms"
        async with store.transaction() as conn:  # the same pooled session, a new transaction
            assert await _setting(conn, "lock_timeout") == "0"
            assert await _setting(conn, "statement_timeout") == "0"
            await store.turns.create_turn(conn, ALLOW, params)  # a write sets them too
            assert await _setting(conn, "lock_timeout") == "250ms"


async def test_no_bounds_leave_the_servers_settings(turnstore_pg_dsn: str) -> None:
    store = await PostgresStore.open(turnstore_pg_dsn, max_size=1, lock_timeout_secs=None)
    async with store:
        params = _params()
        async with store.transaction() as conn:
            await store.turns.find_latest_for_update(conn, ALLOW, params.tenant_id, params.chat_id)
            await store.turns.create_turn(conn, ALLOW, params)
            assert await _setting(conn, "lock_timeout") == "0"
            assert await _setting(conn, "statement_timeout") == "0"


async def test_the_default_lock_timeout_is_ten_seconds(turnstore_pg_dsn: str) -> None:
    async with await PostgresStore.open(turnstore_pg_dsn, max_size=1) as store:
        params = _params()
        async with store.transaction() as conn:
            await store.turns.create_turn(conn, ALLOW, params)
            assert await _setting(conn, "lock_timeout") == "10s"
            assert await _setting(conn, "statement_timeout") == "0"


async def _locked_turn(store: PostgresStore) -> tuple[uuid.UUID, psycopg.AsyncConnection[Any]]:
    """A running turn, and an open transaction of another session that holds its row."""
    params = _params()
    async with store.connection() as conn:
        await store.turns.create_turn(conn, ALLOW, params)
    assert store.dsn is not None
    holder = await psycopg.AsyncConnection.connect(store.dsn)
    await holder.execute(
        "SELECT 1 FROM turnstore.chat_turns WHERE id = %s FOR UPDATE", (params.id,)
    )
    return params.id, holder


async def test_an_autocommit_write_behind_a_held_row_gives_up_typed(turnstore_pg_dsn: str) -> None:
    store = await PostgresStore.open(turnstore_pg_dsn, max_size=2, lock_timeout_secs=0.3)
    async with store:
        turn_id, holder = await _locked_turn(store)
        async with holder:
            async with store.connection() as conn:
                with pytest.raises(LockTimeoutError) as raised:
                    await store.turns.update_progress_at(conn, ALLOW, turn_id)
            assert (raised.value.code, raised.value.retryable) == ("lock_timeout", True)
            assert isinstance(raised.value.__cause__, psycopg.errors.LockNotAvailable)
            await holder.rollback()
        async with store.connection() as conn:  # nothing was half-done
            assert await store.turns.update_progress_at(conn, ALLOW, turn_id)


async def test_without_a_lock_timeout_the_same_write_waits(turnstore_pg_dsn: str) -> None:
    """The bound above is the store's doing: without it the write is still waiting."""
    store = await PostgresStore.open(turnstore_pg_dsn, max_size=2, lock_timeout_secs=None)
    async with store:
        turn_id, holder = await _locked_turn(store)
        async with holder, store.connection() as conn:
            write = asyncio.ensure_future(store.turns.update_progress_at(conn, ALLOW, turn_id))
            done, _ = await asyncio.wait([write], timeout=UNBOUNDED_PROBE_SECS)
            assert not done, "the write should still be waiting for the row"
            await holder.rollback()
            assert await asyncio.wait_for(write, timeout=30)


async def test_a_statement_past_its_bound_in_a_transaction_is_typed(turnstore_pg_dsn: str) -> None:
    """In a transaction the statements after turnstore's first are bounded: one waiting for
    a held row past ``statement_timeout_secs`` (no lock timeout) is a statement timeout, and
    PostgreSQL leaves the caller's transaction aborted, as documented."""
    store = await PostgresStore.open(
        turnstore_pg_dsn, max_size=2, lock_timeout_secs=None, statement_timeout_secs=0.3
    )
    async with store:
        turn_id, holder = await _locked_turn(store)
        async with holder:

            async def complete_in_a_transaction() -> None:
                async with store.transaction() as conn:
                    await store.turns.find_latest_for_update(
                        conn, ALLOW, uuid.uuid4(), uuid.uuid4()
                    )
                    await store.turns.cas_update_completed(
                        conn,
                        ALLOW,
                        CasCompleteParams(turn_id=turn_id, assistant_message_id=uuid.uuid4()),
                    )

            with pytest.raises(StatementTimeoutError) as raised:
                await complete_in_a_transaction()
            assert (raised.value.code, raised.value.retryable) == ("statement_timeout", True)


async def test_a_chat_lock_held_by_another_transaction_bounds_delete(turnstore_pg_dsn: str) -> None:
    """The caller's own transaction as the runner: the chat lock wait is bounded too."""
    store = await PostgresStore.open(turnstore_pg_dsn, max_size=3, lock_timeout_secs=0.3)
    async with store:
        lifecycle = TurnLifecycle(store)
        user = uuid.uuid4()
        params = _params().model_copy(
            update={"requester_type": RequesterType.USER, "requester_user_id": user}
        )
        started = await lifecycle.begin_turn(ALLOW, params)
        assert started.turn is not None
        assert (await lifecycle.complete_turn(ALLOW, started.turn, uuid.uuid4())).won
        async with store.transaction() as holder:
            await store.turns.find_latest_for_update(
                holder, ALLOW, params.tenant_id, params.chat_id
            )
            with contextlib.suppress(Rollback):
                async with store.transaction() as mine:
                    with pytest.raises(LockTimeoutError):
                        await asyncio.wait_for(
                            lifecycle.delete_turn(
                                ALLOW,
                                params.tenant_id,
                                params.chat_id,
                                params.request_id,
                                user,
                                runner=mine,
                            ),
                            timeout=30,
                        )
                    # PostgreSQL leaves the caller's transaction aborted: roll it back.
                    assert mine.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
                    raise Rollback
        async with store.connection() as conn:  # nothing was deleted
            turn = await store.turns.get_turn(conn, ALLOW, started.turn.id)
            assert turn is not None
            assert turn.deleted_at is None


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, True, "5", 86_401, 0.0001], ids=repr)
@pytest.mark.parametrize("name", ["lock_timeout_secs", "statement_timeout_secs"])
async def test_bad_timeouts_are_refused_before_anything_opens(
    turnstore_pg_dsn: str, name: str, bad: object
) -> None:
    with pytest.raises(InvalidParameterError, match=name):
        await PostgresStore.open(turnstore_pg_dsn, **{name: bad})  # type: ignore[arg-type]


# --- prepared statements -----------------------------------------------------------------


async def _prepared_count(store: PostgresStore) -> int:
    async with store.connection() as conn:
        for _ in range(6):
            await store.turns.find_latest_turn(conn, ALLOW, uuid.uuid4(), uuid.uuid4())
        cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_prepare_threshold_none_never_prepares(turnstore_pg_dsn: str) -> None:
    async with await PostgresStore.open(
        turnstore_pg_dsn, max_size=1, prepare_threshold=None
    ) as store:
        assert await _prepared_count(store) == 0
    async with await PostgresStore.open(turnstore_pg_dsn, max_size=1) as store:
        assert await _prepared_count(store) > 0  # psycopg's default prepares


@pytest.mark.parametrize("bad", [-1, True, "0", 1.5], ids=repr)
async def test_bad_prepare_threshold_is_refused(turnstore_pg_dsn: str, bad: object) -> None:
    with pytest.raises(InvalidParameterError, match="prepare_threshold"):
        await PostgresStore.open(turnstore_pg_dsn, prepare_threshold=bad)  # type: ignore[arg-type]


# --- dead pooled connections -------------------------------------------------------------

POOL = 5


async def _calls_after_killing_the_pool(store: PostgresStore, dsn: str) -> list[str]:
    """Fill the pool, terminate every pooled session (as a restart would), then make
    ``2 * POOL`` calls one after another: the failures."""
    async with store.connection() as first, store.connection() as second:
        pids = [first.info.backend_pid, second.info.backend_pid]
    await asyncio.gather(*(store.check_schema() for _ in range(POOL)))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name = ''"
        )
        assert pids
    await asyncio.sleep(0.2)  # the goodbyes reach the sockets
    failures = []
    for _ in range(2 * POOL):
        try:
            async with store.connection() as conn:
                await store.turns.find_latest_turn(conn, ALLOW, uuid.uuid4(), uuid.uuid4())
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
    return failures


async def test_checked_connections_survive_killed_sessions(turnstore_pg_dsn: str) -> None:
    store = await PostgresStore.open(turnstore_pg_dsn, min_size=POOL, max_size=POOL)
    async with store:
        assert await _calls_after_killing_the_pool(store, turnstore_pg_dsn) == []


async def test_unchecked_connections_fail_after_killed_sessions(turnstore_pg_dsn: str) -> None:
    """Why the check is on by default: without it each dead connection fails a call."""
    store = await PostgresStore.open(
        turnstore_pg_dsn, min_size=POOL, max_size=POOL, check_connections=False
    )
    async with store:
        assert await _calls_after_killing_the_pool(store, turnstore_pg_dsn) != []


# --- pool errors -------------------------------------------------------------------------


async def test_a_pool_busy_elsewhere_is_a_retryable_pool_timeout(turnstore_pg_dsn: str) -> None:
    async with await PostgresStore.open(turnstore_pg_dsn, max_size=1, timeout=0.3) as store:
        held = asyncio.Event()
        release = asyncio.Event()

        async def hold() -> None:
            async with store.connection():
                held.set()
                await release.wait()

        holder = asyncio.ensure_future(hold())
        await held.wait()
        try:
            with pytest.raises(PoolTimeoutError) as raised:
                async with store.connection():
                    pass
            assert not isinstance(raised.value, PoolDeadlockError)
            assert (raised.value.code, raised.value.retryable) == ("pool_timeout", True)
        finally:
            release.set()
            await holder


async def test_a_call_waiting_for_its_own_transaction_is_a_pool_deadlock(
    turnstore_pg_dsn: str,
) -> None:
    """``begin_turn`` inside ``store.transaction()`` without ``runner=``: it needs a second
    connection while its own task holds the only one."""
    async with await PostgresStore.open(turnstore_pg_dsn, max_size=1, timeout=0.3) as store:
        lifecycle = TurnLifecycle(store)
        with pytest.raises(PoolDeadlockError) as raised:
            async with store.transaction():
                await lifecycle.begin_turn(ALLOW, _params())
        assert (raised.value.code, raised.value.retryable) == ("pool_deadlock", False)
        assert "runner" in str(raised.value)
        started = await lifecycle.begin_turn(ALLOW, _params())  # the pool is fine afterwards
        assert started.started
