# WARNING: this file is generated from src/turnstore/testing/conformance/reads.py by tools/async_to_sync.py; do not edit.
"""Conformance of the plain reads: by request id, the running turn, the latest turn."""

from __future__ import annotations

from uuid import uuid4

import pytest

from turnstore.model import TurnState
from turnstore.scope import AccessScope
from turnstore.sync.testing.backends import BackendHarness
from turnstore.sync.testing.conformance._support import ALLOW, Backend, ordered_ids

__all__ = ["TestFindByChatAndRequestId", "TestFindLatestTurn", "TestFindRunningByChatId"]


class TestFindByChatAndRequestId:
    def test_finds_by_both_keys_only(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.finish(db.create())
        other_chat = db.create(request_id=turn.request_id)
        other_request = db.create(chat_id=turn.chat_id, tenant_id=turn.tenant_id)
        with db.store.connection() as runner:
            find = db.repo.find_by_chat_and_request_id
            assert find(runner, ALLOW, turn.tenant_id, turn.chat_id, turn.request_id) == turn
            assert (
                find(runner, ALLOW, other_chat.tenant_id, other_chat.chat_id, turn.request_id)
                == other_chat
            )
            assert (
                find(runner, ALLOW, turn.tenant_id, turn.chat_id, other_request.request_id)
                == other_request
            )
            assert find(runner, ALLOW, turn.tenant_id, turn.chat_id, uuid4()) is None
            assert find(runner, ALLOW, turn.tenant_id, uuid4(), turn.request_id) is None
            assert find(runner, ALLOW, uuid4(), turn.chat_id, turn.request_id) is None

    def test_includes_deleted_turns(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.delete(db.finish(db.create()))
        assert turn.deleted_at is not None
        with db.store.connection() as runner:
            found = db.repo.find_by_chat_and_request_id(
                runner, ALLOW, turn.tenant_id, turn.chat_id, turn.request_id
            )
        assert found == turn


class TestFindRunningByChatId:
    def test_returns_the_running_turn_of_the_chat(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        older = db.finish(db.create())
        running = db.create(chat_id=older.chat_id, tenant_id=older.tenant_id)
        db.create()
        with db.store.connection() as runner:
            assert (
                db.repo.find_running_by_chat_id(runner, ALLOW, older.tenant_id, older.chat_id)
                == running
            )
            assert db.repo.find_running_by_chat_id(runner, ALLOW, older.tenant_id, uuid4()) is None

    @pytest.mark.parametrize("state", [TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED])
    def test_excludes_terminal_turns(
        self, turnstore_sync_backend: BackendHarness, state: TurnState
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.finish(db.create(), state)
        with db.store.connection() as runner:
            assert (
                db.repo.find_running_by_chat_id(runner, ALLOW, turn.tenant_id, turn.chat_id) is None
            )

    def test_excludes_deleted_running_turns(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.delete(db.create())
        assert turn.state is TurnState.RUNNING
        with db.store.connection() as runner:
            assert (
                db.repo.find_running_by_chat_id(runner, ALLOW, turn.tenant_id, turn.chat_id) is None
            )


class TestFindLatestTurn:
    def test_orders_by_started_at_not_by_id(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        low, high = ordered_ids()
        chat_id, tenant_id = (uuid4(), uuid4())
        first = db.finish(db.create(turn_id=high, chat_id=chat_id, tenant_id=tenant_id))
        second = db.create(turn_id=low, chat_id=chat_id, tenant_id=tenant_id)
        assert db.latest(tenant_id, chat_id) == second
        with db.store.connection() as runner:
            db.repo.set_assistant_message_id(runner, ALLOW, first.id, uuid4())
        assert db.latest(tenant_id, chat_id) == second

    @pytest.mark.parametrize(
        "larger_id_first", [True, False], ids=["larger-first", "larger-second"]
    )
    def test_same_started_at_the_larger_id_is_latest(
        self, turnstore_sync_backend: BackendHarness, larger_id_first: bool
    ) -> None:
        db = Backend(turnstore_sync_backend)
        first, second = db.chat_started_at_once(larger_id_first)
        assert db.latest(first.tenant_id, first.chat_id) == max(first, second, key=lambda t: t.id)

    def test_by_started_at_not_by_progress(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        chat_id, tenant_id = (uuid4(), uuid4())
        first = db.finish(db.create(chat_id=chat_id, tenant_id=tenant_id))
        second = db.create(chat_id=chat_id, tenant_id=tenant_id)
        assert db.touch(second) == 1
        second = db.reload(second)
        assert db.latest(tenant_id, chat_id) == second
        assert first.started_at < second.started_at

    def test_excludes_deleted_turns(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        first, second = db.chat_of(2)
        db.delete(second)
        assert db.latest(first.tenant_id, first.chat_id) == first
        db.delete(first)
        assert db.latest(first.tenant_id, first.chat_id) is None

    def test_only_the_given_chat(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        (mine,) = db.chat_of(1)
        db.create(tenant_id=mine.tenant_id)
        assert db.latest(mine.tenant_id, mine.chat_id) == mine
        assert db.latest(uuid4(), uuid4()) is None

    def test_the_latest_in_scope(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        mine = db.finish(db.create())
        newer = db.create(chat_id=mine.chat_id, tenant_id=mine.tenant_id)
        assert db.latest(mine.tenant_id, mine.chat_id) == newer
        assert db.latest(mine.tenant_id, mine.chat_id, AccessScope.for_resource(mine.id)) == mine
        tenant_scope = AccessScope.for_tenant(uuid4())
        assert db.latest(mine.tenant_id, mine.chat_id, tenant_scope) is None

    def test_the_chat_is_the_tenants(self, turnstore_sync_backend: BackendHarness) -> None:
        """docs/design.md, *The table and its constraints*: a chat is (tenant_id, chat_id);
        another tenant's chat with the same id is another chat."""
        db = Backend(turnstore_sync_backend)
        mine = db.finish(db.create())
        foreign = db.create(chat_id=mine.chat_id)
        assert db.latest(mine.tenant_id, mine.chat_id) == mine
        assert db.latest(foreign.tenant_id, mine.chat_id) == foreign
        with db.store.connection() as runner:
            assert (
                db.repo.find_running_by_chat_id(runner, ALLOW, mine.tenant_id, mine.chat_id) is None
            )
            assert (
                db.repo.find_running_by_chat_id(runner, ALLOW, foreign.tenant_id, mine.chat_id)
                == foreign
            )
            assert (
                db.repo.find_by_chat_and_request_id(
                    runner, ALLOW, foreign.tenant_id, mine.chat_id, mine.request_id
                )
                is None
            )
