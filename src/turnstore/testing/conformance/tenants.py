"""Conformance of tenant isolation: a chat is ``(tenant_id, chat_id)`` (docs/design.md, *The
table and its constraints*), so tenants sharing a chat id share nothing: not the running
slot, not idempotency keys, not the latest turn, not the chat lock."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest

from turnstore._compat_async import spawn, wait_tasks
from turnstore.errors import DuplicateRequestError, GenerationInProgressError, TurnNotFoundError
from turnstore.scope import AccessScope
from turnstore.testing.backends import BackendHarness
from turnstore.testing.conformance._support import (
    ALLOW,
    BLOCK_PROBE_SECS,
    Backend,
    bounded_join,
    bounded_wait,
    make_params,
)

__all__ = ["TestTenantsSharingAChatId"]


@pytest.mark.asyncio
class TestTenantsSharingAChatId:
    async def test_another_tenants_running_turn_does_not_block(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        theirs = await db.create()
        mine = await db.create(chat_id=theirs.chat_id)  # another tenant, the same chat id
        assert mine.chat_id == theirs.chat_id
        assert mine.tenant_id != theirs.tenant_id
        # My chat's running turn is mine, and a second start in my chat names it.
        for scope in (ALLOW, AccessScope.for_tenant(mine.tenant_id)):
            params = make_params(tenant_id=mine.tenant_id, chat_id=mine.chat_id)
            async with db.store.connection() as runner:
                with pytest.raises(GenerationInProgressError) as info:
                    await db.repo.create_turn(runner, scope, params)
                running = await db.repo.find_running_by_chat_id(
                    runner, scope, mine.tenant_id, mine.chat_id
                )
            assert info.value.running_turn_id == mine.id
            assert running == mine

    async def test_idempotency_keys_are_per_tenant(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        theirs = await db.finish(await db.create())
        mine = await db.create(chat_id=theirs.chat_id, request_id=theirs.request_id)
        async with db.store.connection() as runner:
            find = db.repo.find_by_chat_and_request_id
            assert await find(runner, ALLOW, mine.tenant_id, mine.chat_id, mine.request_id) == mine
            assert (
                await find(runner, ALLOW, theirs.tenant_id, mine.chat_id, mine.request_id) == theirs
            )
            again = make_params(
                tenant_id=mine.tenant_id, chat_id=mine.chat_id, request_id=mine.request_id
            )
            with pytest.raises(DuplicateRequestError) as info:
                await db.repo.create_turn(runner, ALLOW, again)
        assert info.value.existing_turn_id == mine.id

    async def test_the_latest_turn_is_the_tenants(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        mine = await db.finish(await db.create())
        theirs = await db.create(chat_id=mine.chat_id)  # newer, in their chat
        assert await db.latest(mine.tenant_id, mine.chat_id) == mine
        assert await db.latest_for_update(mine.tenant_id, mine.chat_id) == mine
        assert await db.latest(theirs.tenant_id, mine.chat_id) == theirs

    async def test_a_scope_that_cannot_see_the_turn_cannot_change_it(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        theirs = await db.create()
        mine = AccessScope.for_tenant(uuid4())
        async with db.store.connection() as runner:
            with pytest.raises(TurnNotFoundError):
                await db.repo.soft_delete(runner, mine, theirs.id, None)
            assert await db.repo.update_progress_at(runner, mine, theirs.id) == 0
            found = await db.repo.find_latest_for_update(
                runner, mine, theirs.tenant_id, theirs.chat_id
            )
            assert found is None
        assert await db.reload(theirs) == theirs

    @pytest.mark.parametrize(
        "who", ["other-tenant-scope", "own-chat", "resource-elsewhere", "deny-all"]
    )
    async def test_the_chat_lock_is_not_shared_with_a_caller_who_cannot_see_the_chat(
        self, turnstore_backend: BackendHarness, who: str
    ) -> None:
        """docs/design.md, *The latest-turn lock*: while tenant A holds its chat's lock in an
        open transaction, a caller whose scope cannot see A's chat returns at once, whether it
        names A's chat under its own scope or its own chat with the same id."""
        db = Backend(turnstore_backend)
        theirs = await db.create()
        tenant_b = uuid4()
        elsewhere = await db.create(tenant_id=tenant_b)
        scope, tenant = {
            "other-tenant-scope": (AccessScope.for_tenant(tenant_b), theirs.tenant_id),
            "own-chat": (AccessScope.for_tenant(tenant_b), tenant_b),
            "resource-elsewhere": (AccessScope.for_resource(elsewhere.id), theirs.tenant_id),
            "deny-all": (AccessScope.deny_all(), theirs.tenant_id),
        }[who]
        locked, release = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with db.store.transaction() as runner:
                await db.repo.find_latest_for_update(
                    runner,
                    AccessScope.for_tenant(theirs.tenant_id),
                    theirs.tenant_id,
                    theirs.chat_id,
                )
                locked.set()
                await bounded_wait(release)

        held = spawn(holder)
        try:
            await bounded_wait(locked)
            other = spawn(db.latest_for_update, tenant, theirs.chat_id, scope)
            done = await wait_tasks([other], BLOCK_PROBE_SECS * 4)
            assert done, f"{who}: waited for a chat lock its scope cannot see"
            assert await bounded_join(other) is None
            # The lock is really held: a caller who sees the chat waits.
            seer = AccessScope.for_resource(theirs.id)
            blocked = spawn(db.latest_for_update, theirs.tenant_id, theirs.chat_id, seer)
            done = await wait_tasks([blocked], BLOCK_PROBE_SECS)
            assert not done, "a caller who sees the chat got through its held lock"
        finally:
            release.set()
            await bounded_join(held)
        assert await bounded_join(blocked) == theirs
