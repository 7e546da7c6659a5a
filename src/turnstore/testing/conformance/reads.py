"""Conformance of the plain reads: by request id, the running turn, the latest turn."""

from __future__ import annotations

from uuid import uuid4

import pytest

from turnstore.model import TurnState
from turnstore.scope import AccessScope
from turnstore.testing.backends import BackendHarness
from turnstore.testing.conformance._support import ALLOW, Backend, ordered_ids

__all__ = [
    "TestFindByChatAndRequestId",
    "TestFindLatestTurn",
    "TestFindRunningByChatId",
]


@pytest.mark.asyncio
class TestFindByChatAndRequestId:
    async def test_finds_by_both_keys_only(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.finish(await db.create())
        other_chat = await db.create(request_id=turn.request_id)
        other_request = await db.create(chat_id=turn.chat_id, tenant_id=turn.tenant_id)
        async with db.store.connection() as runner:
            find = db.repo.find_by_chat_and_request_id
            assert await find(runner, ALLOW, turn.tenant_id, turn.chat_id, turn.request_id) == turn
            assert (
                await find(runner, ALLOW, other_chat.tenant_id, other_chat.chat_id, turn.request_id)
                == other_chat
            )
            assert await find(
                runner, ALLOW, turn.tenant_id, turn.chat_id, other_request.request_id
            ) == (other_request)
            assert await find(runner, ALLOW, turn.tenant_id, turn.chat_id, uuid4()) is None
            assert await find(runner, ALLOW, turn.tenant_id, uuid4(), turn.request_id) is None
            assert await find(runner, ALLOW, uuid4(), turn.chat_id, turn.request_id) is None

    async def test_includes_deleted_turns(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.delete(await db.finish(await db.create()))
        assert turn.deleted_at is not None
        async with db.store.connection() as runner:
            found = await db.repo.find_by_chat_and_request_id(
                runner, ALLOW, turn.tenant_id, turn.chat_id, turn.request_id
            )
        assert found == turn


@pytest.mark.asyncio
class TestFindRunningByChatId:
    async def test_returns_the_running_turn_of_the_chat(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        older = await db.finish(await db.create())
        running = await db.create(chat_id=older.chat_id, tenant_id=older.tenant_id)
        await db.create()  # another chat's running turn
        async with db.store.connection() as runner:
            assert (
                await db.repo.find_running_by_chat_id(runner, ALLOW, older.tenant_id, older.chat_id)
                == running
            )
            assert (
                await db.repo.find_running_by_chat_id(runner, ALLOW, older.tenant_id, uuid4())
                is None
            )

    @pytest.mark.parametrize("state", [TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED])
    async def test_excludes_terminal_turns(
        self, turnstore_backend: BackendHarness, state: TurnState
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.finish(await db.create(), state)
        async with db.store.connection() as runner:
            assert (
                await db.repo.find_running_by_chat_id(runner, ALLOW, turn.tenant_id, turn.chat_id)
                is None
            )

    async def test_excludes_deleted_running_turns(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.delete(await db.create())
        assert turn.state is TurnState.RUNNING
        async with db.store.connection() as runner:
            assert (
                await db.repo.find_running_by_chat_id(runner, ALLOW, turn.tenant_id, turn.chat_id)
                is None
            )


@pytest.mark.asyncio
class TestFindLatestTurn:
    async def test_orders_by_started_at_not_by_id(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        low, high = ordered_ids()
        chat_id, tenant_id = uuid4(), uuid4()
        first = await db.finish(await db.create(turn_id=high, chat_id=chat_id, tenant_id=tenant_id))
        second = await db.create(turn_id=low, chat_id=chat_id, tenant_id=tenant_id)
        assert await db.latest(tenant_id, chat_id) == second
        # Later writes to the older turn do not make it the latest.
        async with db.store.connection() as runner:
            await db.repo.set_assistant_message_id(runner, ALLOW, first.id, uuid4())
        assert await db.latest(tenant_id, chat_id) == second

    @pytest.mark.parametrize(
        "larger_id_first", [True, False], ids=["larger-first", "larger-second"]
    )
    async def test_same_started_at_the_larger_id_is_latest(
        self, turnstore_backend: BackendHarness, larger_id_first: bool
    ) -> None:
        db = Backend(turnstore_backend)
        first, second = await db.chat_started_at_once(larger_id_first)
        assert (await db.latest(first.tenant_id, first.chat_id)) == max(
            first, second, key=lambda t: t.id
        )

    async def test_by_started_at_not_by_progress(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        chat_id, tenant_id = uuid4(), uuid4()
        first = await db.finish(await db.create(chat_id=chat_id, tenant_id=tenant_id))
        second = await db.create(chat_id=chat_id, tenant_id=tenant_id)
        # The older turn gets no progress (it is terminal), the newer one does.
        assert await db.touch(second) == 1
        second = await db.reload(second)
        assert await db.latest(tenant_id, chat_id) == second
        assert first.started_at < second.started_at

    async def test_excludes_deleted_turns(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        first, second = await db.chat_of(2)
        await db.delete(second)
        assert await db.latest(first.tenant_id, first.chat_id) == first
        await db.delete(first)
        assert await db.latest(first.tenant_id, first.chat_id) is None

    async def test_only_the_given_chat(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        (mine,) = await db.chat_of(1)
        await db.create(tenant_id=mine.tenant_id)  # a newer turn of another chat
        assert await db.latest(mine.tenant_id, mine.chat_id) == mine
        assert await db.latest(uuid4(), uuid4()) is None

    async def test_the_latest_in_scope(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        mine = await db.finish(await db.create())
        newer = await db.create(chat_id=mine.chat_id, tenant_id=mine.tenant_id)
        assert await db.latest(mine.tenant_id, mine.chat_id) == newer
        assert (
            await db.latest(mine.tenant_id, mine.chat_id, AccessScope.for_resource(mine.id)) == mine
        )
        tenant_scope = AccessScope.for_tenant(uuid4())
        assert await db.latest(mine.tenant_id, mine.chat_id, tenant_scope) is None

    async def test_the_chat_is_the_tenants(self, turnstore_backend: BackendHarness) -> None:
        """docs/design.md, *The table and its constraints*: a chat is (tenant_id, chat_id);
        another tenant's chat with the same id is another chat."""
        db = Backend(turnstore_backend)
        mine = await db.finish(await db.create())
        foreign = await db.create(chat_id=mine.chat_id)  # another tenant's, newer, running
        assert await db.latest(mine.tenant_id, mine.chat_id) == mine
        assert await db.latest(foreign.tenant_id, mine.chat_id) == foreign
        async with db.store.connection() as runner:
            assert (
                await db.repo.find_running_by_chat_id(runner, ALLOW, mine.tenant_id, mine.chat_id)
                is None
            )
            assert (
                await db.repo.find_running_by_chat_id(
                    runner, ALLOW, foreign.tenant_id, mine.chat_id
                )
                == foreign
            )
            assert (
                await db.repo.find_by_chat_and_request_id(
                    runner, ALLOW, foreign.tenant_id, mine.chat_id, mine.request_id
                )
                is None
            )
