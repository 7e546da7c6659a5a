"""What is specific to the in-memory store: its locks and waits, mirrored on PostgreSQL's
READ COMMITTED; deadlocks; aliasing; its indexes; its clocks.

The behaviour of the 14 methods is the conformance suite's (``tests/test_conformance.py``),
run on both backends. Here every wait is observed without sleeping: the fake only makes
progress when the event loop runs it, so a task that is still pending after the loop has
had many turns is blocked, not slow.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from typing import Any, TypeVar
from uuid import uuid4

import pytest
from psycopg.errors import DeadlockDetected, InFailedSqlTransaction
from pydantic import ValidationError

from turnstore import rules
from turnstore.clock import SystemClock
from turnstore.errors import (
    DuplicateRequestError,
    DuplicateTurnIdError,
    GenerationInProgressError,
    InvalidParameterError,
    LockTimeoutError,
    StoreUnavailableError,
)
from turnstore.memory import InMemoryConnection, InMemoryStore
from turnstore.model import Turn, TurnState
from turnstore.repository import TurnRepository, TurnStore
from turnstore.scope import AccessScope
from turnstore.testing import ManualClock
from turnstore.testing.conformance import (
    bounded,
    complete_params,
    make_params,
    ordered_ids,
    terminal_params,
)

ALLOW = AccessScope.allow_all()
T = TypeVar("T")

# The fake satisfies the protocols (checked by mypy).
_store_type: type[TurnStore[InMemoryConnection]] = InMemoryStore


def _repository_of(store: InMemoryStore) -> TurnRepository[InMemoryConnection]:
    return store.turns


@pytest.fixture
async def store() -> AsyncIterator[InMemoryStore]:
    async with InMemoryStore(clock=ManualClock()) as opened:
        yield opened


async def settle() -> None:
    """Let every runnable task run until it finishes or blocks."""
    for _ in range(100):
        await asyncio.sleep(0)


async def is_blocked(task: asyncio.Task[Any]) -> bool:
    await settle()
    return not task.done()


class Txn:
    """A transaction held open across awaits, so tests can interleave several."""

    def __init__(self, store: InMemoryStore) -> None:
        self._store = store
        self._stack = AsyncExitStack()
        self.runner: InMemoryConnection

    async def __aenter__(self) -> Txn:
        self.runner = await self._stack.enter_async_context(self._store.transaction())
        return self

    async def commit(self) -> None:
        await self._stack.aclose()

    async def rollback(self) -> None:
        await self._stack.__aexit__(RuntimeError, RuntimeError("rollback"), None)

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


def spawn(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    return asyncio.create_task(coro)


async def create(store: InMemoryStore, **fields: Any) -> Turn:
    async with store.connection() as runner:
        return await store.turns.create_turn(runner, ALLOW, make_params(**fields))


async def reload(store: InMemoryStore, turn: Turn) -> Turn:
    async with store.connection() as runner:
        found = await store.turns.find_by_chat_and_request_id(
            runner, ALLOW, turn.tenant_id, turn.chat_id, turn.request_id
        )
    assert found is not None
    return found


async def finish(store: InMemoryStore, turn: Turn) -> Turn:
    async with store.connection() as runner:
        assert await store.turns.cas_update_completed(runner, ALLOW, complete_params(turn)) == 1
    return await reload(store, turn)


# --- row locks: a writer waits, then re-checks on the committed row ----------------------


@pytest.mark.parametrize("first_commits", [True, False], ids=["commit", "rollback"])
async def test_second_finalizer_waits_and_rechecks(
    store: InMemoryStore, first_commits: bool
) -> None:
    turn = await create(store)
    first = await Txn(store).__aenter__()
    assert await store.turns.cas_update_completed(first.runner, ALLOW, complete_params(turn)) == 1

    async def second() -> int:
        async with store.transaction() as runner:
            return await store.turns.cas_update_state(
                runner, ALLOW, terminal_params(turn, TurnState.CANCELLED)
            )

    task = spawn(second())
    assert await is_blocked(task)
    await (first.commit() if first_commits else first.rollback())
    # After a commit the re-check sees 'completed': no row. After a rollback the row is
    # still running: the waiter wins.
    assert await bounded(task) == (0 if first_commits else 1)
    final = await reload(store, turn)
    assert final.state is (TurnState.COMPLETED if first_commits else TurnState.CANCELLED)


async def test_orphan_finalizer_rechecks_progress_renewed_while_it_waited(
    store: InMemoryStore,
) -> None:
    turn = await create(store)
    store_clock = store.clock
    assert isinstance(store_clock, ManualClock)
    store_clock.advance(400)
    keeper = await Txn(store).__aenter__()
    assert await store.turns.update_progress_at(keeper.runner, ALLOW, turn.id) == 1

    async def finalize() -> int:
        async with store.connection() as runner:
            return await store.turns.cas_finalize_orphan(runner, turn.id, 300)

    task = spawn(finalize())
    assert await is_blocked(task)
    await keeper.commit()
    assert await bounded(task) == 0
    assert (await reload(store, turn)).state is TurnState.RUNNING


async def test_a_row_that_does_not_match_is_not_waited_for(store: InMemoryStore) -> None:
    turn = await finish(store, await create(store))
    holder = await Txn(store).__aenter__()
    await store.turns.set_assistant_message_id(holder.runner, ALLOW, turn.id, uuid4())
    async with store.connection() as runner:
        # Terminal in the snapshot: no match, so no wait on the holder's lock.
        task = spawn(store.turns.update_progress_at(runner, ALLOW, turn.id))
        assert not await is_blocked(task)
        assert await bounded(task) == 0
    await holder.commit()


async def test_a_repeated_delete_still_locks_the_row(store: InMemoryStore) -> None:
    turn = await finish(store, await create(store))
    async with store.connection() as runner:
        await store.turns.soft_delete(runner, ALLOW, turn.id, None)
    deleter = await Txn(store).__aenter__()
    await store.turns.soft_delete(deleter.runner, ALLOW, turn.id, uuid4())

    async def set_message() -> None:
        async with store.connection() as runner:
            await store.turns.set_assistant_message_id(runner, ALLOW, turn.id, uuid4())

    task = spawn(set_message())
    assert await is_blocked(task)
    await deleter.commit()
    await bounded(task)
    assert (await reload(store, turn)).replaced_by_request_id is None


# --- inserts wait for an open transaction holding a conflicting row ---------------------


def _conflicting(turn: Turn, rule: str) -> dict[str, Any]:
    """Fields of a second insert that collides with ``turn`` on one unique index only."""
    if rule == "id":
        return {"turn_id": turn.id}
    chat = {"tenant_id": turn.tenant_id, "chat_id": turn.chat_id}
    if rule == "request":
        return {**chat, "request_id": turn.request_id}
    return chat


CONFLICTS: dict[str, type[Exception]] = {
    "id": DuplicateTurnIdError,
    "request": DuplicateRequestError,
    "running": GenerationInProgressError,
}


@pytest.mark.parametrize("rule", CONFLICTS)
@pytest.mark.parametrize("first_commits", [True, False], ids=["commit", "rollback"])
async def test_insert_waits_for_an_uncommitted_conflicting_insert(
    store: InMemoryStore, rule: str, first_commits: bool
) -> None:
    first = await Txn(store).__aenter__()
    mine = await store.turns.create_turn(first.runner, ALLOW, make_params())
    second_params = make_params(**_conflicting(mine, rule))

    async def second() -> Turn:
        async with store.transaction() as runner:
            return await store.turns.create_turn(runner, ALLOW, second_params)

    task = spawn(second())
    assert await is_blocked(task)
    await (first.commit() if first_commits else first.rollback())
    if first_commits:
        with pytest.raises(CONFLICTS[rule]):
            await bounded(task)
    else:
        assert (await bounded(task)).id == second_params.id


@pytest.mark.parametrize("first_commits", [True, False], ids=["commit", "rollback"])
async def test_insert_waits_for_the_running_turn_being_finalized(
    store: InMemoryStore, first_commits: bool
) -> None:
    running = await create(store)
    finalizer = await Txn(store).__aenter__()
    assert await store.turns.cas_update_completed(finalizer.runner, ALLOW, complete_params(running))
    params = make_params(chat_id=running.chat_id, tenant_id=running.tenant_id)

    async def start() -> Turn:
        async with store.connection() as runner:
            return await store.turns.create_turn(runner, ALLOW, params)

    task = spawn(start())
    assert await is_blocked(task)
    await (finalizer.commit() if first_commits else finalizer.rollback())
    if first_commits:
        assert (await bounded(task)).id == params.id
    else:
        with pytest.raises(GenerationInProgressError) as caught:
            await bounded(task)
        assert caught.value.running_turn_id == running.id


async def test_a_row_locked_for_update_does_not_make_inserts_wait(
    store: InMemoryStore,
) -> None:
    turn = await create(store)
    locker = await Txn(store).__aenter__()
    assert (
        await store.turns.find_latest_for_update(locker.runner, ALLOW, turn.tenant_id, turn.chat_id)
        == turn
    )
    async with store.connection() as runner:
        task = spawn(
            store.turns.create_turn(
                runner, ALLOW, make_params(chat_id=turn.chat_id, tenant_id=turn.tenant_id)
            )
        )
        assert not await is_blocked(task)
        with pytest.raises(GenerationInProgressError):
            await bounded(task)
    await locker.commit()


# --- find_latest_for_update --------------------------------------------------------------


async def test_latest_for_update_after_a_writer_that_bypassed_the_chat_lock(
    store: InMemoryStore,
) -> None:
    """A transaction that replaced the latest turn X by Y without taking the chat lock:
    the locker waits on X's row, and must still come back with Y, not the older W."""
    chat_id, tenant_id = uuid4(), uuid4()
    older = await finish(store, await create(store, chat_id=chat_id, tenant_id=tenant_id))
    latest = await finish(store, await create(store, chat_id=chat_id, tenant_id=tenant_id))
    replacement = make_params(chat_id=chat_id, tenant_id=tenant_id)
    writer = await Txn(store).__aenter__()
    await store.turns.soft_delete(writer.runner, ALLOW, latest.id, replacement.request_id)
    await store.turns.create_turn(writer.runner, ALLOW, replacement)

    async def lock_latest() -> Turn | None:
        async with store.transaction() as runner:
            return await store.turns.find_latest_for_update(runner, ALLOW, tenant_id, chat_id)

    task = spawn(lock_latest())
    assert await is_blocked(task)
    await writer.commit()
    found = await bounded(task)
    assert found is not None
    assert found.id == replacement.id
    assert found.id != older.id


async def test_latest_for_update_waits_on_a_row_held_by_a_plain_writer(
    store: InMemoryStore,
) -> None:
    turn = await create(store)
    writer = await Txn(store).__aenter__()
    await store.turns.update_progress_at(writer.runner, ALLOW, turn.id)

    async def lock_latest() -> Turn | None:
        async with store.transaction() as runner:
            return await store.turns.find_latest_for_update(
                runner, ALLOW, turn.tenant_id, turn.chat_id
            )

    task = spawn(lock_latest())
    assert await is_blocked(task)
    await writer.commit()
    found = await bounded(task)
    assert found is not None
    assert found.last_progress_at is not None
    assert turn.last_progress_at is not None
    assert found.last_progress_at > turn.last_progress_at  # the row as committed


async def test_latest_for_update_serializes_a_chat_without_turns(store: InMemoryStore) -> None:
    """The chat lock, not a row lock: nothing to lock yet, and still the second waits."""
    params = make_params()
    first = await Txn(store).__aenter__()
    assert (
        await store.turns.find_latest_for_update(
            first.runner, ALLOW, params.tenant_id, params.chat_id
        )
        is None
    )

    async def lock_latest() -> Turn | None:
        async with store.transaction() as runner:
            return await store.turns.find_latest_for_update(
                runner, ALLOW, params.tenant_id, params.chat_id
            )

    task = spawn(lock_latest())
    assert await is_blocked(task)
    created = await store.turns.create_turn(first.runner, ALLOW, params)
    await first.commit()
    assert await bounded(task) == created


async def test_latest_for_update_in_autocommit_releases_at_once(store: InMemoryStore) -> None:
    turn = await create(store)
    async with store.connection() as runner:
        assert (
            await store.turns.find_latest_for_update(runner, ALLOW, turn.tenant_id, turn.chat_id)
            == turn
        )
    async with store.transaction() as runner:
        task = spawn(
            store.turns.find_latest_for_update(runner, ALLOW, turn.tenant_id, turn.chat_id)
        )
        assert not await is_blocked(task)
        assert await bounded(task) == turn
        assert await store.turns.update_progress_at(runner, ALLOW, turn.id) == 1


async def test_latest_for_update_keeps_the_row_locked_until_the_end(
    store: InMemoryStore,
) -> None:
    turn = await create(store)
    locker = await Txn(store).__aenter__()
    await store.turns.find_latest_for_update(locker.runner, ALLOW, turn.tenant_id, turn.chat_id)

    async def finalize() -> int:
        async with store.connection() as runner:
            return await store.turns.cas_update_completed(runner, ALLOW, complete_params(turn))

    task = spawn(finalize())
    assert await is_blocked(task)
    await store.turns.cas_update_state(
        locker.runner, ALLOW, terminal_params(turn, TurnState.CANCELLED)
    )
    await locker.commit()
    assert await bounded(task) == 0


# --- deadlocks ---------------------------------------------------------------------------


async def test_deadlock_fails_the_longest_waiter_and_aborts_its_transaction(
    store: InMemoryStore,
) -> None:
    a, b = await create(store), await create(store)
    first = await Txn(store).__aenter__()
    second = await Txn(store).__aenter__()
    assert await store.turns.update_progress_at(first.runner, ALLOW, a.id) == 1
    assert await store.turns.update_progress_at(second.runner, ALLOW, b.id) == 1
    first_waits = spawn(store.turns.update_progress_at(first.runner, ALLOW, b.id))
    assert await is_blocked(first_waits)
    second_waits = spawn(store.turns.update_progress_at(second.runner, ALLOW, a.id))
    with pytest.raises(DeadlockDetected):
        await bounded(first_waits)
    assert await is_blocked(second_waits)  # still waiting: the victim holds its lock on a
    with pytest.raises(InFailedSqlTransaction):
        await store.turns.find_latest_turn(first.runner, ALLOW, a.tenant_id, a.chat_id)
    await first.commit()  # a failed transaction can only roll back
    assert await bounded(second_waits) == 1
    await second.commit()
    assert (await reload(store, a)).updated_at > a.updated_at
    assert (await reload(store, b)).updated_at > b.updated_at


# --- lock timeouts ------------------------------------------------------------------------


async def test_a_wait_past_lock_timeout_fails_typed_and_aborts_the_waiter() -> None:
    async with InMemoryStore(clock=ManualClock(), lock_timeout_secs=0.2) as store:
        turn = await create(store)
        holder = await Txn(store).__aenter__()
        waiter = await Txn(store).__aenter__()
        assert await store.turns.update_progress_at(holder.runner, ALLOW, turn.id) == 1
        with pytest.raises(LockTimeoutError) as raised:
            await bounded(store.turns.update_progress_at(waiter.runner, ALLOW, turn.id))
        assert raised.value.retryable
        with pytest.raises(InFailedSqlTransaction):  # as PostgreSQL leaves it
            await store.turns.find_latest_turn(waiter.runner, ALLOW, turn.tenant_id, turn.chat_id)
        await waiter.commit()  # rolls back
        async with store.connection() as runner:  # autocommit: the statement fails alone
            with pytest.raises(LockTimeoutError):
                await bounded(store.turns.update_progress_at(runner, ALLOW, turn.id))
        await holder.commit()
        async with store.connection() as runner:
            assert await store.turns.update_progress_at(runner, ALLOW, turn.id) == 1


async def test_without_a_lock_timeout_the_fake_waits() -> None:
    async with InMemoryStore(clock=ManualClock(), lock_timeout_secs=None) as store:
        turn = await create(store)
        holder = await Txn(store).__aenter__()
        assert await store.turns.update_progress_at(holder.runner, ALLOW, turn.id) == 1
        async with store.connection() as runner:
            waits = spawn(store.turns.update_progress_at(runner, ALLOW, turn.id))
            await asyncio.sleep(0.4)
            assert not waits.done()
            await holder.commit()
            assert await bounded(waits) == 1


@pytest.mark.parametrize("bad", [0, -1, math.nan, True, "1"], ids=repr)
def test_a_bad_lock_timeout_is_refused(bad: object) -> None:
    with pytest.raises(InvalidParameterError, match="lock_timeout_secs"):
        InMemoryStore(lock_timeout_secs=bad)  # type: ignore[arg-type]


# --- transactions: reads merge own writes with the committed indexes ---------------------


async def test_latest_and_orphans_inside_a_transaction_see_its_own_writes(
    store: InMemoryStore,
) -> None:
    clock = store.clock
    assert isinstance(clock, ManualClock)
    old = await finish(store, await create(store))
    stale = await create(store)
    clock.advance(400)
    async with store.transaction() as runner:
        await store.turns.soft_delete(runner, ALLOW, old.id, None)
        assert await store.turns.find_latest_turn(runner, ALLOW, old.tenant_id, old.chat_id) is None
        new = await store.turns.create_turn(
            runner, ALLOW, make_params(chat_id=old.chat_id, tenant_id=old.tenant_id)
        )
        assert await store.turns.find_latest_turn(runner, ALLOW, old.tenant_id, old.chat_id) == new
        assert [t.id for t in await store.turns.find_orphan_candidates(runner, 300, 10)] == [
            stale.id
        ]
        assert await store.turns.update_progress_at(runner, ALLOW, stale.id) == 1
        assert await store.turns.find_orphan_candidates(runner, 300, 10) == []
        async with store.connection() as other:
            # Outside, nothing of that is visible yet.
            assert (
                await store.turns.find_latest_turn(other, ALLOW, old.tenant_id, old.chat_id) == old
            )
            outside = await store.turns.find_orphan_candidates(other, 300, 10)
            assert [t.id for t in outside] == [stale.id]
        clock.advance(400)
        inside = await store.turns.find_orphan_candidates(runner, 300, 10)
        assert [t.id for t in inside] == [new.id, stale.id]  # by progress


@pytest.mark.parametrize("end", ["finalize", "delete"])
async def test_running_turn_ended_inside_a_transaction_is_gone_only_there(
    store: InMemoryStore, end: str
) -> None:
    turn = await create(store)
    async with store.transaction() as runner:
        if end == "finalize":
            await store.turns.cas_update_completed(runner, ALLOW, complete_params(turn))
        else:
            await store.turns.soft_delete(runner, ALLOW, turn.id, None)
        assert (
            await store.turns.find_running_by_chat_id(runner, ALLOW, turn.tenant_id, turn.chat_id)
            is None
        )
        # The chat's running slot is free for this transaction's own next turn.
        params = make_params(chat_id=turn.chat_id, tenant_id=turn.tenant_id)
        created = await store.turns.create_turn(runner, ALLOW, params)
        assert (
            await store.turns.find_running_by_chat_id(runner, ALLOW, turn.tenant_id, turn.chat_id)
            == created
        )
        async with store.connection() as other:
            outside = await store.turns.find_running_by_chat_id(
                other, ALLOW, turn.tenant_id, turn.chat_id
            )
            assert outside == turn


async def test_orphan_scan_stops_at_the_limit_with_own_writes_merged(
    store: InMemoryStore,
) -> None:
    clock = store.clock
    assert isinstance(clock, ManualClock)
    turns = [await create(store) for _ in range(4)]
    clock.advance(400)
    async with store.transaction() as runner:
        # Renewing the oldest moves it to the end of the order.
        await store.turns.update_progress_at(runner, ALLOW, turns[0].id)
        clock.advance(400)
        found = await store.turns.find_orphan_candidates(runner, 300, 4)
        assert [t.id for t in found] == [t.id for t in (*turns[1:], turns[0])]
        found = await store.turns.find_orphan_candidates(runner, 300, 2)
        assert [t.id for t in found] == [turns[1].id, turns[2].id]


# --- runners and the store ---------------------------------------------------------------


async def test_a_runner_is_unusable_after_its_block(store: InMemoryStore) -> None:
    async with store.connection() as runner:
        pass
    with pytest.raises(StoreUnavailableError):
        await store.turns.find_latest_turn(runner, ALLOW, uuid4(), uuid4())
    async with store.transaction() as txn_runner:
        pass
    with pytest.raises(StoreUnavailableError):
        await store.turns.find_latest_turn(txn_runner, ALLOW, uuid4(), uuid4())


async def test_a_closed_store_refuses_runners() -> None:
    store = InMemoryStore()
    await store.migrate()
    await store.close()
    with pytest.raises(StoreUnavailableError):
        async with store.connection():
            pass
    with pytest.raises(StoreUnavailableError):
        async with store.transaction():
            pass


async def test_a_foreign_runner_is_refused(store: InMemoryStore) -> None:
    with pytest.raises(TypeError, match="InMemoryStore"):
        await store.turns.find_latest_turn(object(), ALLOW, uuid4(), uuid4())  # type: ignore[arg-type]


async def test_calls_on_one_runner_are_serialized(store: InMemoryStore) -> None:
    turn = await create(store)
    holder = await Txn(store).__aenter__()
    await store.turns.update_progress_at(holder.runner, ALLOW, turn.id)
    async with store.connection() as runner:
        blocked = spawn(store.turns.update_progress_at(runner, ALLOW, turn.id))
        assert await is_blocked(blocked)
        # The same runner is busy: even a read on it waits its turn, as on a connection.
        read = spawn(store.turns.find_latest_turn(runner, ALLOW, turn.tenant_id, turn.chat_id))
        assert await is_blocked(read)
        await holder.commit()
        assert await bounded(blocked) == 1
        assert await bounded(read) is not None


async def test_a_busy_autocommit_runner_queues_calls_on_free_rows(store: InMemoryStore) -> None:
    """An autocommit call on a row no transaction holds takes a path without transaction
    bookkeeping; it must still wait behind a call already in flight on its runner."""
    held = await create(store)
    free = await create(store)
    holder = await Txn(store).__aenter__()
    await store.turns.update_progress_at(holder.runner, ALLOW, held.id)
    async with store.connection() as runner:
        blocked = spawn(store.turns.update_progress_at(runner, ALLOW, held.id))
        assert await is_blocked(blocked)
        write = spawn(store.turns.update_progress_at(runner, ALLOW, free.id))
        insert = spawn(store.turns.create_turn(runner, ALLOW, make_params()))
        assert await is_blocked(write)
        assert await is_blocked(insert)
        await holder.commit()
        assert await bounded(blocked) == 1
        assert await bounded(write) == 1
        assert (await bounded(insert)).state is TurnState.RUNNING


# --- aliasing -----------------------------------------------------------------------------


async def test_returned_turns_are_copies(store: InMemoryStore) -> None:
    created = await create(store)
    with pytest.raises(ValidationError, match="frozen"):
        created.state = TurnState.FAILED  # type: ignore[misc]
    created.__dict__["state"] = TurnState.FAILED
    object.__setattr__(created, "error_code", "tampered")
    async with store.connection() as runner:
        found = await store.turns.find_running_by_chat_id(
            runner, ALLOW, created.tenant_id, created.chat_id
        )
        assert found is not None
        assert found.error_code is None
        found.__dict__["deleted_at"] = datetime.now(timezone.utc)
        latest = await store.turns.find_latest_turn(
            runner, ALLOW, created.tenant_id, created.chat_id
        )
        assert latest is not None
        assert latest.deleted_at is None
        assert latest is not found
        for listed in await store.turns.find_orphan_candidates(runner, 0, 10):
            listed.__dict__["state"] = TurnState.CANCELLED
        locked = await store.turns.find_latest_for_update(
            runner, ALLOW, created.tenant_id, created.chat_id
        )
        assert locked is not None
        locked.__dict__["state"] = TurnState.CANCELLED
    again = await reload(store, created)
    assert again.state is TurnState.RUNNING
    assert again.error_code is None


# --- indexes: a lookup reads a bounded number of rows, however many are stored ----------


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "transaction"])
async def test_a_keep_alive_moves_the_turn_in_the_orphan_order(
    store: InMemoryStore, in_transaction: bool
) -> None:
    """The orphan scan stops at the first fresh entry of its index, so an entry left at
    a renewed turn's old progress would hide every orphan behind it."""
    clock = store.clock
    assert isinstance(clock, ManualClock)
    renewed = await create(store)
    clock.advance(10)
    stale = await create(store)
    clock.advance(400)
    async with store.transaction() if in_transaction else store.connection() as runner:
        assert await store.turns.update_progress_at(runner, ALLOW, renewed.id) == 1
    async with store.connection() as runner:
        found = await store.turns.find_orphan_candidates(runner, 300, 10)
        assert [t.id for t in found] == [stale.id]
        clock.advance(400)
        found = await store.turns.find_orphan_candidates(runner, 300, 1)
        assert [t.id for t in found] == [stale.id]
        found = await store.turns.find_orphan_candidates(runner, 300, 10)
        assert [t.id for t in found] == [stale.id, renewed.id]


async def test_lookups_do_not_walk_the_rows(
    store: InMemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = store.clock
    assert isinstance(clock, ManualClock)
    chats = [uuid4() for _ in range(200)]
    tenant = uuid4()
    async with store.connection() as runner:
        for i in range(2000):
            params = make_params(chat_id=chats[i % len(chats)], tenant_id=tenant)
            turn = await store.turns.create_turn(runner, ALLOW, params)
            if i < 1990:
                await store.turns.cas_update_completed(runner, ALLOW, complete_params(turn))
    clock.advance(400)
    target = turn

    permits_calls = 0
    orphan_checks = 0
    real_permits = AccessScope.permits
    real_is_orphan = rules.is_orphan

    def counting_permits(self: AccessScope, row: Any) -> bool:
        nonlocal permits_calls
        permits_calls += 1
        return real_permits(self, row)

    def counting_is_orphan(turn: Turn, now: datetime, timeout_secs: int) -> bool:
        nonlocal orphan_checks
        orphan_checks += 1
        return real_is_orphan(turn, now, timeout_secs)

    monkeypatch.setattr(AccessScope, "permits", counting_permits)
    monkeypatch.setattr(rules, "is_orphan", counting_is_orphan)
    repo = store.turns
    scope = AccessScope.for_tenant(target.tenant_id)
    lookups: list[Callable[[InMemoryConnection], Awaitable[object]]] = [
        lambda r: repo.find_by_chat_and_request_id(
            r, scope, target.tenant_id, target.chat_id, target.request_id
        ),
        lambda r: repo.find_running_by_chat_id(r, scope, target.tenant_id, target.chat_id),
        lambda r: repo.find_latest_turn(r, scope, target.tenant_id, target.chat_id),
        lambda r: repo.find_latest_for_update(r, scope, target.tenant_id, target.chat_id),
        lambda r: repo.update_progress_at(r, scope, target.id),
        lambda r: repo.find_orphan_candidates(r, 300, 3),
    ]
    async with store.connection() as runner:
        for _ in range(50):  # running and fresh: the scan must stop before these
            await repo.create_turn(runner, ALLOW, make_params())
        orphan_checks = 0
        assert len(await repo.find_orphan_candidates(runner, 300, 100)) == 10
        assert orphan_checks == 11
        for lookup in lookups:
            permits_calls = orphan_checks = 0
            assert await lookup(runner) not in (None, [], 0)
            # One row (the latest-for-update re-read reads it twice), or the limit.
            assert permits_calls <= 2
            assert orphan_checks <= 3


# --- clocks ---------------------------------------------------------------------------------


def test_manual_clock_stands_still_yet_never_repeats() -> None:
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    clock = ManualClock(start)
    readings = [clock.now() for _ in range(5)]
    assert readings[0] == start
    assert all(b - a == timedelta(microseconds=1) for a, b in pairwise(readings))
    assert all(r.tzinfo is not None and r.utcoffset() == timedelta(0) for r in readings)


def test_manual_clock_advances_from_its_latest_reading() -> None:
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=timezone.utc))
    readings = [clock.now() for _ in range(1000)]
    clock.advance(300)
    assert clock.now() - readings[-1] == timedelta(seconds=300)
    clock.advance(0)
    assert clock.now() > readings[-1] + timedelta(seconds=300)


def test_manual_clock_converts_to_utc_and_defaults_to_now() -> None:
    plus_two = timezone(timedelta(hours=2))
    clock = ManualClock(datetime(2030, 1, 1, 12, tzinfo=plus_two))
    assert clock.now() == datetime(2030, 1, 1, 10, tzinfo=timezone.utc)
    assert clock.now().tzinfo == timezone.utc
    before = datetime.now(timezone.utc)
    assert ManualClock().now() >= before


@pytest.mark.parametrize("seconds", [-1, -0.5, math.nan, math.inf, True, "5"])
def test_manual_clock_refuses_to_go_back_or_nowhere(seconds: Any) -> None:
    clock = ManualClock()
    first = clock.now()
    with pytest.raises(InvalidParameterError):
        clock.advance(seconds)
    assert clock.now() - first == timedelta(microseconds=1)


def test_manual_clock_refuses_a_naive_start() -> None:
    with pytest.raises(InvalidParameterError):
        ManualClock(datetime(2030, 1, 1))


def test_system_clock_strictly_increases() -> None:
    clock = SystemClock()
    readings = [clock.now() for _ in range(10_000)]
    assert all(a < b for a, b in pairwise(readings))
    assert readings[0].tzinfo is not None


async def test_turns_created_later_sort_later_under_a_still_clock(store: InMemoryStore) -> None:
    chat_id, tenant_id = uuid4(), uuid4()
    async with store.transaction() as runner:
        made = []
        for turn_id in reversed(ordered_ids(5)):  # ids descending: only time can order them
            params = make_params(chat_id=chat_id, tenant_id=tenant_id, turn_id=turn_id)
            made.append(await store.turns.create_turn(runner, ALLOW, params))
            await store.turns.cas_update_completed(runner, ALLOW, complete_params(made[-1]))
        latest = await store.turns.find_latest_turn(runner, ALLOW, tenant_id, chat_id)
    assert latest is not None
    assert latest.id == made[-1].id
    assert [t.started_at for t in made] == sorted({t.started_at for t in made})
