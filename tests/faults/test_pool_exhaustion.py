"""A busy pool: every connection held elsewhere. Callers get a typed, retryable
``PoolTimeoutError`` within the pool's timeout (never a hang, never ``store_unavailable``
for a server that is up), and the same calls succeed once the pool frees up."""

from __future__ import annotations

import asyncio

import pytest

from faults.conftest import FaultDatabase
from faults.invariants import assert_clean
from faults.workload import TurnChat
from turnstore.errors import PoolDeadlockError, PoolTimeoutError
from turnstore.lifecycle import TurnLifecycle
from turnstore.postgres import PostgresStore

pytestmark = pytest.mark.faults

POOL = 2
CALLERS = 40
POOL_TIMEOUT_SECS = 0.5
#: What a refusal may take beyond the pool's timeout on a loaded machine.
SLACK_SECS = 5.0


async def test_callers_of_an_exhausted_pool_get_a_typed_retryable_error_in_time(
    fault_db: FaultDatabase,
) -> None:
    store = await PostgresStore.open(
        fault_db.dsn, min_size=POOL, max_size=POOL, timeout=POOL_TIMEOUT_SECS
    )
    async with store:
        lifecycle = TurnLifecycle(store)
        holding = asyncio.Semaphore(0)  # no asyncio.Barrier on Python 3.10
        release = asyncio.Event()

        async def hold() -> None:
            async with store.transaction():
                holding.release()
                await release.wait()

        holders = [asyncio.ensure_future(hold()) for _ in range(POOL)]
        for _ in range(POOL):
            await asyncio.wait_for(holding.acquire(), timeout=30)
        loop = asyncio.get_running_loop()
        chats = [TurnChat() for _ in range(CALLERS)]

        async def call(chat: TurnChat) -> tuple[BaseException | None, float]:
            began = loop.time()
            try:
                await lifecycle.begin_turn(chat.scope, chat.params())
            except Exception as exc:
                return exc, loop.time() - began
            return None, loop.time() - began

        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(call(chat) for chat in chats)), timeout=60
            )
        finally:
            release.set()
            await asyncio.wait_for(asyncio.gather(*holders), timeout=30)
        for error, took in results:
            assert isinstance(error, PoolTimeoutError), error
            assert not isinstance(error, PoolDeadlockError)
            assert error.retryable
            assert took < POOL_TIMEOUT_SECS + SLACK_SECS, took
        again = await asyncio.wait_for(
            asyncio.gather(*(lifecycle.begin_turn(c.scope, c.params()) for c in chats)),
            timeout=60,
        )
        assert all(outcome.started for outcome in again)
        await assert_clean(store, fault_db.dsn)
