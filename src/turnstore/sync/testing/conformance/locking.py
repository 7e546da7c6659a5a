# WARNING: this file is generated from src/turnstore/testing/conformance/locking.py by tools/async_to_sync.py; do not edit.
"""Conformance of ``find_latest_for_update``: the latest turn, locked, with the chat serialized."""

from __future__ import annotations

import threading
from uuid import uuid4

import pytest

from turnstore._compat_sync import spawn, wait_tasks
from turnstore.model import Turn
from turnstore.scope import AccessScope
from turnstore.sync.testing.backends import BackendHarness
from turnstore.sync.testing.conformance._support import (
    ALLOW,
    BLOCK_PROBE_SECS,
    Backend,
    Planted,
    bounded,
    bounded_join,
    bounded_wait,
    make_params,
    ordered_ids,
)

__all__ = ["TestFindLatestForUpdate"]


class TestFindLatestForUpdate:
    def test_same_answer_as_find_latest_turn(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        low, high = ordered_ids()
        chat_id, tenant_id = (uuid4(), uuid4())
        db.finish(db.create(turn_id=high, chat_id=chat_id, tenant_id=tenant_id))
        second = db.create(turn_id=low, chat_id=chat_id, tenant_id=tenant_id)
        assert db.latest_for_update(tenant_id, chat_id) == second
        db.delete(second)
        assert db.latest_for_update(tenant_id, chat_id) == db.latest(tenant_id, chat_id)
        assert db.latest_for_update(uuid4(), uuid4()) is None

    @pytest.mark.parametrize(
        "larger_id_first", [True, False], ids=["larger-first", "larger-second"]
    )
    def test_same_started_at_the_larger_id_is_latest(
        self, turnstore_sync_backend: BackendHarness, larger_id_first: bool
    ) -> None:
        db = Backend(turnstore_sync_backend)
        first, second = db.chat_started_at_once(larger_id_first)
        larger = max(first, second, key=lambda t: t.id)
        assert db.latest_for_update(first.tenant_id, first.chat_id) == larger

    def test_excludes_deleted_and_other_chats(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        first, second = db.chat_of(2)
        db.create(tenant_id=first.tenant_id)
        db.delete(second)
        assert db.latest_for_update(first.tenant_id, first.chat_id) == first
        db.delete(first)
        assert db.latest_for_update(first.tenant_id, first.chat_id) is None

    def test_the_latest_in_scope(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        mine = db.finish(db.create())
        newer = db.create(chat_id=mine.chat_id, tenant_id=mine.tenant_id)
        db.create(chat_id=mine.chat_id)
        scope = AccessScope.for_tenant(mine.tenant_id)
        assert db.latest_for_update(mine.tenant_id, mine.chat_id, scope) == newer
        resource = AccessScope.for_resource(mine.id)
        assert db.latest_for_update(mine.tenant_id, mine.chat_id, resource) == mine
        assert db.latest_for_update(mine.tenant_id, mine.chat_id, AccessScope.deny_all()) is None

    def test_second_locker_waits_and_then_sees_the_true_latest(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        """docs/design.md, *The latest-turn lock*: the first transaction replaces the latest turn X
        by Y; a locker that waited on it must get Y, not X and not the older W."""
        db = Backend(turnstore_sync_backend)
        older, latest = db.chat_of(2)
        replacement = make_params(chat_id=latest.chat_id, tenant_id=latest.tenant_id)
        first_locked, release_first = (threading.Event(), threading.Event())
        events: list[str] = []

        def first() -> Turn:
            with db.store.transaction() as runner:
                seen = db.repo.find_latest_for_update(
                    runner, ALLOW, latest.tenant_id, latest.chat_id
                )
                assert seen == latest
                first_locked.set()
                bounded_wait(release_first)
                db.repo.soft_delete(runner, ALLOW, latest.id, replacement.request_id)
                created = db.repo.create_turn(runner, ALLOW, replacement)
                events.append("first commits")
            return created

        def second() -> Turn | None:
            with db.store.transaction() as runner:
                seen = db.repo.find_latest_for_update(
                    runner, ALLOW, latest.tenant_id, latest.chat_id
                )
                events.append("second locked")
                return seen

        first_task = spawn(first)
        bounded_wait(first_locked)
        second_task = spawn(second)
        done = wait_tasks([second_task], BLOCK_PROBE_SECS)
        assert not done, "a second locker of the chat got through while the first held it"
        release_first.set()
        created = bounded_join(first_task)
        seen = bounded_join(second_task)
        assert events == ["first commits", "second locked"]
        assert seen is not None
        assert seen.id == created.id, (
            f"waiting locker got {seen.id}; true latest is {created.id} (replaced {latest.id}, older {older.id})"
        )

    def test_an_empty_chat_is_locked_too(self, turnstore_sync_backend: BackendHarness) -> None:
        """The lock is on the chat, not only on its latest row: two transactions that both
        find a chat empty and both mean to start its first turn are serialized."""
        db = Backend(turnstore_sync_backend)
        params = make_params()
        first_locked, release_first = (threading.Event(), threading.Event())

        def first() -> Turn:
            with db.store.transaction() as runner:
                assert (
                    db.repo.find_latest_for_update(runner, ALLOW, params.tenant_id, params.chat_id)
                    is None
                )
                first_locked.set()
                bounded_wait(release_first)
                return db.repo.create_turn(runner, ALLOW, params)

        first_task = spawn(first)
        bounded_wait(first_locked)
        second_task = spawn(db.latest_for_update, params.tenant_id, params.chat_id)
        done = wait_tasks([second_task], BLOCK_PROBE_SECS)
        assert not done, "a second locker of an empty chat got through while the first held it"
        release_first.set()
        created = bounded_join(first_task)
        assert bounded_join(second_task) == created

    def test_rollback_releases_the_lock(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        (turn,) = db.chat_of(1)
        first_locked, release_first = (threading.Event(), threading.Event())

        def first() -> None:
            with db.store.transaction() as runner:
                db.repo.find_latest_for_update(runner, ALLOW, turn.tenant_id, turn.chat_id)
                db.repo.soft_delete(runner, ALLOW, turn.id, None)
                first_locked.set()
                bounded_wait(release_first)
                raise Planted

        first_task = spawn(first)
        bounded_wait(first_locked)
        second_task = spawn(db.latest_for_update, turn.tenant_id, turn.chat_id)
        done = wait_tasks([second_task], BLOCK_PROBE_SECS)
        assert not done, "a second locker of the chat got through while the first held it"
        release_first.set()
        with pytest.raises(Planted):
            bounded_join(first_task)
        assert bounded_join(second_task) == turn

    def test_other_chats_and_plain_readers_are_not_blocked(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        (locked,) = db.chat_of(1)
        (other,) = db.chat_of(1)
        first_locked, release_first = (threading.Event(), threading.Event())

        def first() -> None:
            with db.store.transaction() as runner:
                db.repo.find_latest_for_update(runner, ALLOW, locked.tenant_id, locked.chat_id)
                first_locked.set()
                bounded_wait(release_first)

        first_task = spawn(first)
        try:
            bounded_wait(first_locked)
            assert bounded(db.latest_for_update(other.tenant_id, other.chat_id)) == other
            assert bounded(db.latest(locked.tenant_id, locked.chat_id)) == locked
            assert not first_task.done()
        finally:
            release_first.set()
            bounded_join(first_task)
