"""Retry, edit and delete take the chat's lock; when another open transaction holds it,
they must give up with a typed error within a bound instead of waiting forever."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from faults.conftest import FaultDatabase
from faults.workload import TurnChat
from turnstore.errors import LockTimeoutError
from turnstore.lifecycle import TurnLifecycle
from turnstore.postgres import PostgresStore

pytestmark = pytest.mark.faults

LOCK_TIMEOUT_SECS = 1.0
BOUND_SECS = 10.0


@asynccontextmanager
async def store_with_lock_timeout(dsn: str) -> AsyncIterator[PostgresStore]:
    """A store whose lock waits give up after ``LOCK_TIMEOUT_SECS``."""
    store = await PostgresStore.open(
        dsn, min_size=2, max_size=4, lock_timeout_secs=LOCK_TIMEOUT_SECS
    )
    async with store:
        yield store


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
            with pytest.raises(LockTimeoutError) as raised:
                await asyncio.wait_for(
                    call(chat.scope, chat.tenant_id, chat.chat_id, params.request_id, chat.user_id),
                    timeout=BOUND_SECS,
                )
            assert loop.time() - began < BOUND_SECS
            assert raised.value.retryable
