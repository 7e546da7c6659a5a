# WARNING: this file is generated from src/turnstore/testing/conformance/tenants.py by tools/async_to_sync.py; do not edit.
"""Conformance of tenant isolation: a chat is ``(tenant_id, chat_id)`` (docs/design.md, *The
table and its constraints*), so tenants sharing a chat id share nothing: not the running
slot, not idempotency keys, not the latest turn, not the chat lock."""

from __future__ import annotations

import threading
from uuid import uuid4

import pytest

from turnstore._compat_sync import spawn, wait_tasks
from turnstore.errors import DuplicateRequestError, GenerationInProgressError, TurnNotFoundError
from turnstore.scope import AccessScope
from turnstore.sync.testing.backends import BackendHarness
from turnstore.sync.testing.conformance._support import (
    ALLOW,
    BLOCK_PROBE_SECS,
    Backend,
    bounded_join,
    bounded_wait,
    make_params,
)

__all__ = ["TestTenantsSharingAChatId"]


class TestTenantsSharingAChatId:
    def test_another_tenants_running_turn_does_not_block(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        theirs = db.create()
        mine = db.create(chat_id=theirs.chat_id)
        assert mine.chat_id == theirs.chat_id
        assert mine.tenant_id != theirs.tenant_id
        for scope in (ALLOW, AccessScope.for_tenant(mine.tenant_id)):
            params = make_params(tenant_id=mine.tenant_id, chat_id=mine.chat_id)
            with db.store.connection() as runner:
                with pytest.raises(GenerationInProgressError) as info:
                    db.repo.create_turn(runner, scope, params)
                running = db.repo.find_running_by_chat_id(
                    runner, scope, mine.tenant_id, mine.chat_id
                )
            assert info.value.running_turn_id == mine.id
            assert running == mine

    def test_idempotency_keys_are_per_tenant(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        theirs = db.finish(db.create())
        mine = db.create(chat_id=theirs.chat_id, request_id=theirs.request_id)
        with db.store.connection() as runner:
            find = db.repo.find_by_chat_and_request_id
            assert find(runner, ALLOW, mine.tenant_id, mine.chat_id, mine.request_id) == mine
            assert find(runner, ALLOW, theirs.tenant_id, mine.chat_id, mine.request_id) == theirs
            again = make_params(
                tenant_id=mine.tenant_id, chat_id=mine.chat_id, request_id=mine.request_id
            )
            with pytest.raises(DuplicateRequestError) as info:
                db.repo.create_turn(runner, ALLOW, again)
        assert info.value.existing_turn_id == mine.id

    def test_the_latest_turn_is_the_tenants(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        mine = db.finish(db.create())
        theirs = db.create(chat_id=mine.chat_id)
        assert db.latest(mine.tenant_id, mine.chat_id) == mine
        assert db.latest_for_update(mine.tenant_id, mine.chat_id) == mine
        assert db.latest(theirs.tenant_id, mine.chat_id) == theirs

    def test_a_scope_that_cannot_see_the_turn_cannot_change_it(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        theirs = db.create()
        mine = AccessScope.for_tenant(uuid4())
        with db.store.connection() as runner:
            with pytest.raises(TurnNotFoundError):
                db.repo.soft_delete(runner, mine, theirs.id, None)
            assert db.repo.update_progress_at(runner, mine, theirs.id) == 0
            found = db.repo.find_latest_for_update(runner, mine, theirs.tenant_id, theirs.chat_id)
            assert found is None
        assert db.reload(theirs) == theirs

    @pytest.mark.parametrize(
        "who", ["other-tenant-scope", "own-chat", "resource-elsewhere", "deny-all"]
    )
    def test_the_chat_lock_is_not_shared_with_a_caller_who_cannot_see_the_chat(
        self, turnstore_sync_backend: BackendHarness, who: str
    ) -> None:
        """docs/design.md, *The latest-turn lock*: while tenant A holds its chat's lock in an
        open transaction, a caller whose scope cannot see A's chat returns at once, whether it
        names A's chat under its own scope or its own chat with the same id."""
        db = Backend(turnstore_sync_backend)
        theirs = db.create()
        tenant_b = uuid4()
        elsewhere = db.create(tenant_id=tenant_b)
        scope, tenant = {
            "other-tenant-scope": (AccessScope.for_tenant(tenant_b), theirs.tenant_id),
            "own-chat": (AccessScope.for_tenant(tenant_b), tenant_b),
            "resource-elsewhere": (AccessScope.for_resource(elsewhere.id), theirs.tenant_id),
            "deny-all": (AccessScope.deny_all(), theirs.tenant_id),
        }[who]
        locked, release = (threading.Event(), threading.Event())

        def holder() -> None:
            with db.store.transaction() as runner:
                db.repo.find_latest_for_update(
                    runner,
                    AccessScope.for_tenant(theirs.tenant_id),
                    theirs.tenant_id,
                    theirs.chat_id,
                )
                locked.set()
                bounded_wait(release)

        held = spawn(holder)
        try:
            bounded_wait(locked)
            other = spawn(db.latest_for_update, tenant, theirs.chat_id, scope)
            done = wait_tasks([other], BLOCK_PROBE_SECS * 4)
            assert done, f"{who}: waited for a chat lock its scope cannot see"
            assert bounded_join(other) is None
            seer = AccessScope.for_resource(theirs.id)
            blocked = spawn(db.latest_for_update, theirs.tenant_id, theirs.chat_id, seer)
            done = wait_tasks([blocked], BLOCK_PROBE_SECS)
            assert not done, "a caller who sees the chat got through its held lock"
        finally:
            release.set()
            bounded_join(held)
        assert bounded_join(blocked) == theirs
