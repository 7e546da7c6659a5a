# WARNING: this file is generated from src/turnstore/testing/conformance/timestamps.py by tools/async_to_sync.py; do not edit.
"""Conformance of timestamps: one instant per statement, later calls strictly later."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from turnstore.errors import InvalidParameterError
from turnstore.model import TurnState
from turnstore.sync.testing.backends import BackendHarness
from turnstore.sync.testing.conformance._support import (
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

__all__ = ["TestTimestamps"]


class TestTimestamps:
    def test_set_time_is_read_exactly_even_backwards(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        """The harness contract the boundary and tie-break tests rely on."""
        db = Backend(turnstore_sync_backend)
        with pytest.raises(InvalidParameterError):
            turnstore_sync_backend.set_time(datetime(2031, 5, 17))
        turnstore_sync_backend.set_time(SET_INSTANT)
        turn = db.create()
        assert turn.started_at == turn.last_progress_at == SET_INSTANT
        assert db.touch(turn) == 1
        assert db.reload(turn).last_progress_at == SET_INSTANT + TICK
        earlier = SET_INSTANT - timedelta(days=1)
        turnstore_sync_backend.set_time(earlier)
        before = db.create()
        assert before.started_at == earlier
        turnstore_sync_backend.advance_time(STALE_SECS)
        after = db.create()
        before = db.reload(before)
        assert after.started_at - before.started_at >= timedelta(seconds=STALE_SECS)

    def test_insert_stamps_one_instant(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        assert turn.started_at == turn.last_progress_at == turn.updated_at
        assert turn.started_at.tzinfo is not None
        assert turn.completed_at is None

    def test_later_calls_are_strictly_later(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        first = db.create()
        second = db.create()
        assert second.started_at > first.started_at
        assert db.touch(first) == 1
        touched = db.reload(first)
        assert touched.last_progress_at is not None
        assert touched.last_progress_at > second.started_at
        done = db.finish(touched)
        assert done.completed_at is not None
        assert done.completed_at > touched.last_progress_at
        assert done.updated_at >= done.completed_at

    @pytest.mark.parametrize(
        "finalize", ["cas_update_completed", "cas_update_state", "cas_finalize_orphan"]
    )
    def test_created_and_completed_in_one_transaction(
        self, turnstore_sync_backend: BackendHarness, finalize: str
    ) -> None:
        """With a clock read per transaction instead of per statement, a turn finalized in
        the transaction that created it would show ``completed_at < started_at``."""
        db = Backend(turnstore_sync_backend)
        params = make_params()
        with db.store.transaction() as runner:
            turn = db.repo.create_turn(runner, ALLOW, params)
            if finalize == "cas_update_completed":
                won = db.repo.cas_update_completed(runner, ALLOW, complete_params(turn))
            elif finalize == "cas_update_state":
                cas = terminal_params(turn, TurnState.CANCELLED)
                won = db.repo.cas_update_state(runner, ALLOW, cas)
            else:
                won = db.repo.cas_finalize_orphan(runner, turn.id, 0)
            assert won == 1
        done = db.reload(turn)
        assert done.completed_at is not None
        assert done.completed_at >= done.started_at
        assert done.updated_at >= done.started_at

    def test_later_calls_in_one_transaction_are_strictly_later(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        params = make_params()
        with db.store.transaction() as runner:
            turn = db.repo.create_turn(runner, ALLOW, params)
            assert db.repo.update_progress_at(runner, ALLOW, turn.id) == 1
            touched = db.repo.find_running_by_chat_id(runner, ALLOW, turn.tenant_id, turn.chat_id)
            assert touched is not None
            assert touched.last_progress_at is not None
            assert touched.last_progress_at > turn.started_at
            assert touched.updated_at > turn.updated_at
            db.repo.soft_delete(runner, ALLOW, turn.id, None)
        deleted = db.reload(turn)
        assert deleted.deleted_at is not None
        assert touched.last_progress_at < deleted.deleted_at

    def test_turns_created_later_in_one_transaction_sort_later(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        low, high = ordered_ids()
        first_params = make_params(turn_id=high)
        second_params = make_params(
            turn_id=low, chat_id=first_params.chat_id, tenant_id=first_params.tenant_id
        )
        with db.store.transaction() as runner:
            first = db.repo.create_turn(runner, ALLOW, first_params)
            assert db.repo.cas_update_completed(runner, ALLOW, complete_params(first)) == 1
            second = db.repo.create_turn(runner, ALLOW, second_params)
        assert second.started_at > first.started_at
        assert db.latest(first.tenant_id, first.chat_id) == second

    def test_running_has_no_completed_at_terminal_has_one(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        assert turn.completed_at is None
        for state in (TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED):
            done = db.finish(db.create(), state)
            assert done.completed_at is not None
