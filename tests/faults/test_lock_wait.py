"""Retry, edit and delete take the chat's lock; when another open transaction holds it,
they must give up with a typed error within a bound instead of waiting forever."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg_pool
import pytest

from faults.conftest import FaultDatabase
from faults.workload import TurnChat
from turnstore.errors import TurnStoreError
from turnstore.lifecycle import TurnLifecycle
from turnstore.postgres import PostgresStore

pytestmark = pytest.mark.faults

LOCK_TIMEOUT_MS = 1000
BOUND_SECS = 10.0


@asynccontextmanager
async def store_with_lock_timeout(dsn: str) -> AsyncIterator[PostgresStore]:
    """A store whose sessions give up waiting for a lock after ``LOCK_TIMEOUT_MS``.

    Stands in for the coming ``PostgresStore.open(dsn, lock_timeout_secs=1)``.
    """
    pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
        dsn,
        min_size=2,
        max_size=4,
        timeout=30,
        kwargs={"autocommit": True, "options": f"-c lock_timeout={LOCK_TIMEOUT_MS}"},
        open=False,
    )
    await pool.open(wait=True, timeout=30)
    try:
        yield PostgresStore(pool)
    finally:
        await pool.close(timeout=10)


@pytest.mark.xfail(
    strict=True,
    reason="a lock wait that times out surfaces as a raw psycopg LockNotAvailable, not a "
    "typed turnstore error (and without a lock timeout it waits forever)",
)
@pytest.mark.parametrize("mutation", ["delete", "retry", "edit"])
async def test_mutation_behind_a_held_chat_lock_fails_typed_within_bound(
    fault_db: FaultDatabase, mutation: str
) -> None:
    async with store_with_lock_timeout(fault_db.dsn) as store:
        lifecycle = TurnLifecycle(store)
        chat = TurnChat()
        params = chat.params()
        started = await lifecycle.begin_turn(chat.scope, params)
        assert started.turn is not None
        assert (await lifecycle.complete_turn(chat.scope, started.turn, uuid.uuid4())).won
        call = {
            "delete": lifecycle.delete_turn,
            "retry": lifecycle.retry_turn,
            "edit": lifecycle.edit_turn,
        }[mutation]

        async with store.transaction() as holder:
            # Another request mutating the same chat, its transaction still open.
            await store.turns.find_latest_for_update(
                holder, chat.scope, chat.tenant_id, chat.chat_id
            )
            loop = asyncio.get_running_loop()
            began = loop.time()
            with pytest.raises(TurnStoreError):
                await asyncio.wait_for(
                    call(chat.scope, chat.tenant_id, chat.chat_id, params.request_id, chat.user_id),
                    timeout=BOUND_SECS,
                )
            assert loop.time() - began < BOUND_SECS
