"""Conformance of timestamps: one instant per statement, later calls strictly later."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from turnstore.errors import InvalidParameterError
from turnstore.model import TurnState
from turnstore.testing.backends import BackendHarness
from turnstore.testing.conformance._support import (
    ALLOW,
    SET_INSTANT,
    STALE_SECS,
    TICK,
    Backend,
    complete_params,
    make_params,
    ordered_ids,
    terminal_params,
)

__all__ = [
    "TestTimestamps",
]


@pytest.mark.asyncio
class TestTimestamps:
    async def test_set_time_is_read_exactly_even_backwards(
        self, turnstore_backend: BackendHarness
    ) -> None:
        """The harness contract the boundary and tie-break tests rely on."""
        db = Backend(turnstore_backend)
        with pytest.raises(InvalidParameterError):
            await turnstore_backend.set_time(datetime(2031, 5, 17))  # naive: which zone?
        await turnstore_backend.set_time(SET_INSTANT)
        turn = await db.create()
        assert turn.started_at == turn.last_progress_at == SET_INSTANT
        assert await db.touch(turn) == 1
        assert (await db.reload(turn)).last_progress_at == SET_INSTANT + TICK
        earlier = SET_INSTANT - timedelta(days=1)
        await turnstore_backend.set_time(earlier)
        before = await db.create()
        assert before.started_at == earlier
        await turnstore_backend.advance_time(STALE_SECS)
        after = await db.create()
        before = await db.reload(before)
        assert after.started_at - before.started_at >= timedelta(seconds=STALE_SECS)

    async def test_insert_stamps_one_instant(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        assert turn.started_at == turn.last_progress_at == turn.updated_at
        assert turn.started_at.tzinfo is not None
        assert turn.completed_at is None

    async def test_later_calls_are_strictly_later(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        first = await db.create()
        second = await db.create()
        assert second.started_at > first.started_at
        assert await db.touch(first) == 1
        touched = await db.reload(first)
        assert touched.last_progress_at is not None
        assert touched.last_progress_at > second.started_at
        done = await db.finish(touched)
        assert done.completed_at is not None
        assert done.completed_at > touched.last_progress_at
        assert done.updated_at >= done.completed_at

    @pytest.mark.parametrize(
        "finalize", ["cas_update_completed", "cas_update_state", "cas_finalize_orphan"]
    )
    async def test_created_and_completed_in_one_transaction(
        self, turnstore_backend: BackendHarness, finalize: str
    ) -> None:
        """With a clock read per transaction instead of per statement, a turn finalized in
        the transaction that created it would show ``completed_at < started_at``."""
        db = Backend(turnstore_backend)
        params = make_params()
        async with db.store.transaction() as runner:
            turn = await db.repo.create_turn(runner, ALLOW, params)
            if finalize == "cas_update_completed":
                won = await db.repo.cas_update_completed(runner, ALLOW, complete_params(turn))
            elif finalize == "cas_update_state":
                cas = terminal_params(turn, TurnState.CANCELLED)
                won = await db.repo.cas_update_state(runner, ALLOW, cas)
            else:
                # Timeout 0: stale at once (``last_progress_at <= now``), no time has to pass.
                won = await db.repo.cas_finalize_orphan(runner, turn.id, 0)
            assert won == 1
        done = await db.reload(turn)
        assert done.completed_at is not None
        assert done.completed_at >= done.started_at
        assert done.updated_at >= done.started_at

    async def test_later_calls_in_one_transaction_are_strictly_later(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        params = make_params()
        async with db.store.transaction() as runner:
            turn = await db.repo.create_turn(runner, ALLOW, params)
            assert await db.repo.update_progress_at(runner, ALLOW, turn.id) == 1
            touched = await db.repo.find_running_by_chat_id(
                runner, ALLOW, turn.tenant_id, turn.chat_id
            )
            assert touched is not None
            assert touched.last_progress_at is not None
            assert touched.last_progress_at > turn.started_at
            assert touched.updated_at > turn.updated_at
            await db.repo.soft_delete(runner, ALLOW, turn.id, None)
        deleted = await db.reload(turn)
        assert deleted.deleted_at is not None
        assert touched.last_progress_at < deleted.deleted_at

    async def test_turns_created_later_in_one_transaction_sort_later(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        low, high = ordered_ids()
        first_params = make_params(turn_id=high)
        second_params = make_params(
            turn_id=low, chat_id=first_params.chat_id, tenant_id=first_params.tenant_id
        )
        async with db.store.transaction() as runner:
            first = await db.repo.create_turn(runner, ALLOW, first_params)
            assert await db.repo.cas_update_completed(runner, ALLOW, complete_params(first)) == 1
            second = await db.repo.create_turn(runner, ALLOW, second_params)
        assert second.started_at > first.started_at
        assert await db.latest(first.tenant_id, first.chat_id) == second

    async def test_running_has_no_completed_at_terminal_has_one(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        assert turn.completed_at is None
        for state in (TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED):
            done = await db.finish(await db.create(), state)
            assert done.completed_at is not None
