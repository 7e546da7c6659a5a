"""The backend of a lifecycle call killed (``pg_terminate_backend``) at each step: the
caller gets a typed error, nothing is half-written, and the next call works."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from faults.conftest import FaultDatabase
from faults.invariants import assert_clean, count_turns
from faults.workload import TurnChat
from turnstore.errors import StoreUnavailableError, TurnStoreError
from turnstore.lifecycle import KeepAliveSettings, TurnLifecycle
from turnstore.postgres import PostgresStore

pytestmark = pytest.mark.faults

#: Calls after a kill may meet pooled connections the kill (or the pool) has not yet
#: replaced; they are retried this often, on typed errors only.
RETRIES = 5


@pytest.fixture
async def store(fault_db: FaultDatabase) -> AsyncIterator[PostgresStore]:
    opened = await PostgresStore.open(fault_db.dsn, min_size=2, max_size=4)
    async with opened:
        yield opened


async def terminate(dsn: str, pid: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        cur = await admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
        row = await cur.fetchone()
    assert row is not None
    assert row[0] is True


async def retried(call: Any) -> Any:
    for attempt in range(RETRIES):
        try:
            return await call()
        except StoreUnavailableError:
            if attempt == RETRIES - 1:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


async def test_killed_while_beginning_in_the_callers_transaction(
    store: PostgresStore, fault_db: FaultDatabase
) -> None:
    lifecycle = TurnLifecycle(store)
    chat = TurnChat()
    params = chat.params()

    async def begin_then_die() -> None:
        async with store.transaction() as conn:
            started = await lifecycle.begin_turn(chat.scope, params, runner=conn)
            assert started.started
            await terminate(fault_db.dsn, conn.info.backend_pid)

    with pytest.raises(TurnStoreError):
        await begin_then_die()
    # The caller's transaction never committed: no turn, and the chat is free.
    assert await count_turns(fault_db.dsn) == 0
    again = await retried(lambda: lifecycle.begin_turn(chat.scope, params))
    assert again.started
    await assert_clean(store, fault_db.dsn)


async def test_killed_while_touching(store: PostgresStore, fault_db: FaultDatabase) -> None:
    lifecycle = TurnLifecycle(store)
    chat = TurnChat()
    started = await lifecycle.begin_turn(chat.scope, chat.params())
    assert started.turn is not None
    settings = KeepAliveSettings(interval_secs=0.01, heartbeat=False)
    async with lifecycle.keep_alive(chat.scope, started.turn.id, settings=settings) as ka:
        assert await ka.touch()
        # Every pooled session dies, as when a pooler or a failover drops them.
        async with await psycopg.AsyncConnection.connect(fault_db.dsn, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        await asyncio.sleep(0.02)
        errors: list[BaseException] = []
        for _ in range(RETRIES):
            try:
                assert await ka.touch()
                break
            except TurnStoreError as exc:
                errors.append(exc)
                await asyncio.sleep(0.02)
        else:
            pytest.fail(f"touch never recovered: {errors}")
    assert await count_turns(fault_db.dsn, "state = 'running'") == 1
    await assert_clean(store, fault_db.dsn)


async def test_killed_in_the_completion_hook(store: PostgresStore, fault_db: FaultDatabase) -> None:
    lifecycle = TurnLifecycle(store)
    chat = TurnChat()
    started = await lifecycle.begin_turn(chat.scope, chat.params())
    assert started.turn is not None

    async def dying_hook(runner: psycopg.AsyncConnection[Any], outcome: Any) -> None:
        await terminate(fault_db.dsn, runner.info.backend_pid)
        await runner.execute("SELECT 1")

    with pytest.raises(TurnStoreError):
        await lifecycle.complete_turn(chat.scope, started.turn, uuid.uuid4(), hook=dying_hook)
    # The CAS rolled back with the hook: still running, and completing works.
    assert await count_turns(fault_db.dsn, "state = 'running'") == 1
    final = await retried(lambda: lifecycle.complete_turn(chat.scope, started.turn, uuid.uuid4()))
    assert final.won
    assert await count_turns(fault_db.dsn, "state = 'completed'") == 1
    await assert_clean(store, fault_db.dsn)


async def test_killed_while_deleting_waits_on_the_chat_lock(
    store: PostgresStore, fault_db: FaultDatabase
) -> None:
    lifecycle = TurnLifecycle(store)
    chat = TurnChat()
    params = chat.params()
    started = await lifecycle.begin_turn(chat.scope, params)
    assert started.turn is not None
    assert (await lifecycle.complete_turn(chat.scope, started.turn, uuid.uuid4())).won
    async with store.transaction() as holder:
        await store.turns.find_latest_for_update(holder, chat.scope, chat.tenant_id, chat.chat_id)
        deleting = asyncio.ensure_future(
            lifecycle.delete_turn(
                chat.scope, chat.tenant_id, chat.chat_id, params.request_id, chat.user_id
            )
        )
        async with await psycopg.AsyncConnection.connect(fault_db.dsn, autocommit=True) as admin:
            waiting: list[int] = []
            for _ in range(500):
                cur = await admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
                waiting = [r[0] for r in await cur.fetchall()]
                if waiting or deleting.done():
                    break
                await asyncio.sleep(0.01)
            assert waiting, "the delete should wait on the chat lock"
            await terminate(fault_db.dsn, waiting[0])
        with pytest.raises(TurnStoreError):
            await asyncio.wait_for(deleting, timeout=30)
    assert await count_turns(fault_db.dsn, "deleted_at IS NOT NULL") == 0
    deleted = await retried(
        lambda: lifecycle.delete_turn(
            chat.scope, chat.tenant_id, chat.chat_id, params.request_id, chat.user_id
        )
    )
    assert deleted is not None
    assert await count_turns(fault_db.dsn, "deleted_at IS NOT NULL") == 1
    await assert_clean(store, fault_db.dsn)
