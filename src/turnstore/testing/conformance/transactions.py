"""Conformance of transactions: rollback, visibility, and typed errors that leave the
transaction usable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import uuid4

import pytest

from turnstore._compat_async import spawn
from turnstore.errors import (
    DuplicateRequestError,
    DuplicateTurnIdError,
    GenerationInProgressError,
    ScopeDeniedError,
    TurnNotFoundError,
)
from turnstore.model import Turn, TurnState
from turnstore.scope import AccessScope
from turnstore.testing.backends import BackendHarness
from turnstore.testing.conformance._support import (
    ALLOW,
    Backend,
    Planted,
    bounded,
    bounded_join,
    bounded_wait,
    complete_params,
    make_params,
    terminal_params,
    unchanged,
)

__all__ = [
    "TYPED_ERROR_TRIGGERS",
    "TestTransactions",
]


async def _trigger_duplicate_request(db: Backend, runner: Any, existing: Turn) -> None:
    params = make_params(
        chat_id=existing.chat_id, tenant_id=existing.tenant_id, request_id=existing.request_id
    )
    with pytest.raises(DuplicateRequestError):
        await db.repo.create_turn(runner, ALLOW, params)


async def _trigger_generation_in_progress(db: Backend, runner: Any, existing: Turn) -> None:
    params = make_params(chat_id=existing.chat_id, tenant_id=existing.tenant_id)
    with pytest.raises(GenerationInProgressError):
        await db.repo.create_turn(runner, ALLOW, params)


async def _trigger_duplicate_turn_id(db: Backend, runner: Any, existing: Turn) -> None:
    with pytest.raises(DuplicateTurnIdError):
        await db.repo.create_turn(runner, ALLOW, make_params(turn_id=existing.id))


async def _trigger_scope_denied(db: Backend, runner: Any, existing: Turn) -> None:
    with pytest.raises(ScopeDeniedError):
        await db.repo.create_turn(runner, AccessScope.deny_all(), make_params())


async def _trigger_not_found_on_set_message(db: Backend, runner: Any, existing: Turn) -> None:
    with pytest.raises(TurnNotFoundError):
        await db.repo.set_assistant_message_id(runner, ALLOW, uuid4(), uuid4())


async def _trigger_not_found_on_delete(db: Backend, runner: Any, existing: Turn) -> None:
    with pytest.raises(TurnNotFoundError):
        await db.repo.soft_delete(runner, AccessScope.deny_all(), existing.id, None)


TYPED_ERROR_TRIGGERS = {
    "duplicate_request": _trigger_duplicate_request,
    "generation_in_progress": _trigger_generation_in_progress,
    "duplicate_turn_id": _trigger_duplicate_turn_id,
    "scope_denied": _trigger_scope_denied,
    "not_found_set_message": _trigger_not_found_on_set_message,
    "not_found_soft_delete": _trigger_not_found_on_delete,
}


@pytest.mark.asyncio
class TestTransactions:
    async def test_rollback_leaves_no_trace(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        kept = await db.create()
        params = make_params(chat_id=kept.chat_id, tenant_id=kept.tenant_id)

        async def write_then_fail() -> None:
            async with db.store.transaction() as runner:
                assert await db.repo.cas_update_completed(runner, ALLOW, complete_params(kept)) == 1
                await db.repo.create_turn(runner, ALLOW, params)
                await db.repo.soft_delete(runner, ALLOW, kept.id, params.request_id)
                raise Planted

        with pytest.raises(Planted):
            await write_then_fail()
        unchanged(kept)(await db.reload(kept))
        async with db.store.connection() as runner:
            assert (
                await db.repo.find_by_chat_and_request_id(
                    runner, ALLOW, params.tenant_id, params.chat_id, params.request_id
                )
                is None
            )
            # The rolled-back insert left neither its id nor its request id behind.
            await db.repo.cas_update_state(runner, ALLOW, terminal_params(kept, TurnState.FAILED))
            assert (await db.repo.create_turn(runner, ALLOW, params)).id == params.id

    async def test_own_writes_are_visible_inside(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        params = make_params()
        async with db.store.transaction() as runner:
            turn = await db.repo.create_turn(runner, ALLOW, params)
            find = db.repo.find_by_chat_and_request_id
            assert await find(runner, ALLOW, turn.tenant_id, turn.chat_id, turn.request_id) == turn
            assert (
                await db.repo.find_running_by_chat_id(runner, ALLOW, turn.tenant_id, turn.chat_id)
                == turn
            )
            assert await db.repo.cas_update_completed(runner, ALLOW, complete_params(turn)) == 1
            done = await find(runner, ALLOW, turn.tenant_id, turn.chat_id, turn.request_id)
            assert done is not None
            assert done.state is TurnState.COMPLETED
            assert (
                await db.repo.find_running_by_chat_id(runner, ALLOW, turn.tenant_id, turn.chat_id)
                is None
            )
            assert (
                await db.repo.find_latest_turn(runner, ALLOW, turn.tenant_id, turn.chat_id) == done
            )

    async def test_uncommitted_writes_are_invisible_to_others(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        existing = await db.create()
        params = make_params()
        written, release = asyncio.Event(), asyncio.Event()

        async def writer() -> None:
            async with db.store.transaction() as runner:
                await db.repo.create_turn(runner, ALLOW, params)
                await db.repo.cas_update_completed(runner, ALLOW, complete_params(existing))
                written.set()
                await bounded_wait(release)

        task = spawn(writer)
        try:
            await bounded_wait(written)
            async with db.store.connection() as runner:
                find = db.repo.find_by_chat_and_request_id
                assert (
                    await bounded(
                        find(runner, ALLOW, params.tenant_id, params.chat_id, params.request_id)
                    )
                    is None
                )
                running = db.repo.find_running_by_chat_id(
                    runner, ALLOW, existing.tenant_id, existing.chat_id
                )
                assert await bounded(running) == existing
        finally:
            release.set()
            await bounded_join(task)
        assert (await db.reload(existing)).state is TurnState.COMPLETED
        async with db.store.connection() as runner:
            found = await db.repo.find_by_chat_and_request_id(
                runner, ALLOW, params.tenant_id, params.chat_id, params.request_id
            )
        assert found is not None

    @pytest.mark.parametrize("trigger", TYPED_ERROR_TRIGGERS.values(), ids=TYPED_ERROR_TRIGGERS)
    async def test_typed_error_leaves_the_transaction_usable(
        self,
        turnstore_backend: BackendHarness,
        trigger: Callable[[Backend, Any, Turn], Awaitable[None]],
    ) -> None:
        db = Backend(turnstore_backend)
        params = make_params()
        later = make_params()
        async with db.store.transaction() as runner:
            turn = await db.repo.create_turn(runner, ALLOW, params)
            await trigger(db, runner, turn)
            assert await db.repo.update_progress_at(runner, ALLOW, turn.id) == 1
            await db.repo.create_turn(runner, ALLOW, later)
        # Committed: both the write before and the write after the error are there.
        assert (await db.reload(turn)).id == params.id
        async with db.store.connection() as runner:
            found = await db.repo.find_by_chat_and_request_id(
                runner, ALLOW, later.tenant_id, later.chat_id, later.request_id
            )
        assert found is not None

    async def test_typed_error_in_autocommit_keeps_the_connection_usable(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        async with db.store.connection() as runner:
            turn = await db.repo.create_turn(runner, ALLOW, make_params())
            for trigger in TYPED_ERROR_TRIGGERS.values():
                await trigger(db, runner, turn)
            assert await db.repo.update_progress_at(runner, ALLOW, turn.id) == 1
