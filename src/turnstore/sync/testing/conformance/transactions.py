# WARNING: this file is generated from src/turnstore/testing/conformance/transactions.py by tools/async_to_sync.py; do not edit.
"""Conformance of transactions: rollback, visibility, and typed errors that leave the
transaction usable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest

from turnstore._compat_sync import spawn
from turnstore.errors import (
    DuplicateRequestError,
    DuplicateTurnIdError,
    GenerationInProgressError,
    ScopeDeniedError,
    TurnNotFoundError,
)
from turnstore.model import Turn, TurnState
from turnstore.scope import AccessScope
from turnstore.sync.testing.backends import BackendHarness
from turnstore.sync.testing.conformance._support import (
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

__all__ = ["TYPED_ERROR_TRIGGERS", "TestTransactions"]


def _trigger_duplicate_request(db: Backend, runner: Any, existing: Turn) -> None:
    params = make_params(
        chat_id=existing.chat_id, tenant_id=existing.tenant_id, request_id=existing.request_id
    )
    with pytest.raises(DuplicateRequestError):
        db.repo.create_turn(runner, ALLOW, params)


def _trigger_generation_in_progress(db: Backend, runner: Any, existing: Turn) -> None:
    params = make_params(chat_id=existing.chat_id, tenant_id=existing.tenant_id)
    with pytest.raises(GenerationInProgressError):
        db.repo.create_turn(runner, ALLOW, params)


def _trigger_duplicate_turn_id(db: Backend, runner: Any, existing: Turn) -> None:
    with pytest.raises(DuplicateTurnIdError):
        db.repo.create_turn(runner, ALLOW, make_params(turn_id=existing.id))


def _trigger_scope_denied(db: Backend, runner: Any, existing: Turn) -> None:
    with pytest.raises(ScopeDeniedError):
        db.repo.create_turn(runner, AccessScope.deny_all(), make_params())


def _trigger_not_found_on_set_message(db: Backend, runner: Any, existing: Turn) -> None:
    with pytest.raises(TurnNotFoundError):
        db.repo.set_assistant_message_id(runner, ALLOW, uuid4(), uuid4())


def _trigger_not_found_on_delete(db: Backend, runner: Any, existing: Turn) -> None:
    with pytest.raises(TurnNotFoundError):
        db.repo.soft_delete(runner, AccessScope.deny_all(), existing.id, None)


TYPED_ERROR_TRIGGERS = {
    "duplicate_request": _trigger_duplicate_request,
    "generation_in_progress": _trigger_generation_in_progress,
    "duplicate_turn_id": _trigger_duplicate_turn_id,
    "scope_denied": _trigger_scope_denied,
    "not_found_set_message": _trigger_not_found_on_set_message,
    "not_found_soft_delete": _trigger_not_found_on_delete,
}


class TestTransactions:
    def test_rollback_leaves_no_trace(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        kept = db.create()
        params = make_params(chat_id=kept.chat_id, tenant_id=kept.tenant_id)

        def write_then_fail() -> None:
            with db.store.transaction() as runner:
                assert db.repo.cas_update_completed(runner, ALLOW, complete_params(kept)) == 1
                db.repo.create_turn(runner, ALLOW, params)
                db.repo.soft_delete(runner, ALLOW, kept.id, params.request_id)
                raise Planted

        with pytest.raises(Planted):
            write_then_fail()
        unchanged(kept)(db.reload(kept))
        with db.store.connection() as runner:
            assert (
                db.repo.find_by_chat_and_request_id(
                    runner, ALLOW, params.tenant_id, params.chat_id, params.request_id
                )
                is None
            )
            db.repo.cas_update_state(runner, ALLOW, terminal_params(kept, TurnState.FAILED))
            assert db.repo.create_turn(runner, ALLOW, params).id == params.id

    def test_own_writes_are_visible_inside(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        params = make_params()
        with db.store.transaction() as runner:
            turn = db.repo.create_turn(runner, ALLOW, params)
            find = db.repo.find_by_chat_and_request_id
            assert find(runner, ALLOW, turn.tenant_id, turn.chat_id, turn.request_id) == turn
            assert (
                db.repo.find_running_by_chat_id(runner, ALLOW, turn.tenant_id, turn.chat_id) == turn
            )
            assert db.repo.cas_update_completed(runner, ALLOW, complete_params(turn)) == 1
            done = find(runner, ALLOW, turn.tenant_id, turn.chat_id, turn.request_id)
            assert done is not None
            assert done.state is TurnState.COMPLETED
            assert (
                db.repo.find_running_by_chat_id(runner, ALLOW, turn.tenant_id, turn.chat_id) is None
            )
            assert db.repo.find_latest_turn(runner, ALLOW, turn.tenant_id, turn.chat_id) == done

    def test_uncommitted_writes_are_invisible_to_others(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        existing = db.create()
        params = make_params()
        written, release = (threading.Event(), threading.Event())

        def writer() -> None:
            with db.store.transaction() as runner:
                db.repo.create_turn(runner, ALLOW, params)
                db.repo.cas_update_completed(runner, ALLOW, complete_params(existing))
                written.set()
                bounded_wait(release)

        task = spawn(writer)
        try:
            bounded_wait(written)
            with db.store.connection() as runner:
                find = db.repo.find_by_chat_and_request_id
                assert (
                    bounded(
                        find(runner, ALLOW, params.tenant_id, params.chat_id, params.request_id)
                    )
                    is None
                )
                running = db.repo.find_running_by_chat_id(
                    runner, ALLOW, existing.tenant_id, existing.chat_id
                )
                assert bounded(running) == existing
        finally:
            release.set()
            bounded_join(task)
        assert db.reload(existing).state is TurnState.COMPLETED
        with db.store.connection() as runner:
            found = db.repo.find_by_chat_and_request_id(
                runner, ALLOW, params.tenant_id, params.chat_id, params.request_id
            )
        assert found is not None

    @pytest.mark.parametrize("trigger", TYPED_ERROR_TRIGGERS.values(), ids=TYPED_ERROR_TRIGGERS)
    def test_typed_error_leaves_the_transaction_usable(
        self, turnstore_sync_backend: BackendHarness, trigger: Callable[[Backend, Any, Turn], None]
    ) -> None:
        db = Backend(turnstore_sync_backend)
        params = make_params()
        later = make_params()
        with db.store.transaction() as runner:
            turn = db.repo.create_turn(runner, ALLOW, params)
            trigger(db, runner, turn)
            assert db.repo.update_progress_at(runner, ALLOW, turn.id) == 1
            db.repo.create_turn(runner, ALLOW, later)
        assert db.reload(turn).id == params.id
        with db.store.connection() as runner:
            found = db.repo.find_by_chat_and_request_id(
                runner, ALLOW, later.tenant_id, later.chat_id, later.request_id
            )
        assert found is not None

    def test_typed_error_in_autocommit_keeps_the_connection_usable(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        with db.store.connection() as runner:
            turn = db.repo.create_turn(runner, ALLOW, make_params())
            for trigger in TYPED_ERROR_TRIGGERS.values():
                trigger(db, runner, turn)
            assert db.repo.update_progress_at(runner, ALLOW, turn.id) == 1
