"""Conformance of retention: ``purge_turns`` / ``count_purgeable`` and the erasure of a
tenant (``erase_tenant_turns`` / ``count_tenant_turns``), and ``turnstore.retention`` over
them."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest

from turnstore._compat_async import spawn, wait_tasks
from turnstore.errors import InvalidParameterError
from turnstore.model import Turn, TurnState
from turnstore.retention import erase_tenant, purge
from turnstore.testing.backends import BackendHarness
from turnstore.testing.conformance._support import (
    ALLOW,
    BLOCK_PROBE_SECS,
    Backend,
    Planted,
    bounded,
    bounded_join,
    make_params,
)

__all__ = ["TestEraseTenant", "TestPurge"]

#: A retention age for the tests, and a span of time comfortably beyond it.
AGE_SECS = 3600
LONG_AGO_SECS = 7200.0


async def _exists(db: Backend, *turns: Turn) -> list[bool]:
    found = []
    async with db.store.connection() as runner:
        for turn in turns:
            found.append(await db.repo.get_turn(runner, ALLOW, turn.id) is not None)
    return found


@pytest.mark.asyncio
class TestPurge:
    async def test_deletes_old_terminal_turns_deleted_or_not_and_never_a_running_one(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        completed = await db.finish(await db.create())
        failed = await db.finish(await db.create(), TurnState.FAILED)
        cancelled = await db.delete(await db.finish(await db.create(), TurnState.CANCELLED))
        running = await db.create()
        running_deleted = await db.delete(await db.create())
        await turnstore_backend.advance_time(LONG_AGO_SECS)
        recent = await db.finish(await db.create())
        async with db.store.connection() as runner:
            assert await db.repo.count_purgeable(runner, AGE_SECS) == 3
            assert await db.repo.purge_turns(runner, AGE_SECS, 100) == 3
            assert await db.repo.count_purgeable(runner, AGE_SECS) == 0
            assert await db.repo.purge_turns(runner, AGE_SECS, 100) == 0
        assert await _exists(db, completed, failed, cancelled) == [False] * 3
        assert await _exists(db, running, running_deleted, recent) == [True] * 3

    async def test_the_age_is_counted_from_completion(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        old_start = await db.create()
        await turnstore_backend.advance_time(LONG_AGO_SECS)
        ended_now = await db.finish(old_start)
        async with db.store.connection() as runner:
            assert await db.repo.purge_turns(runner, AGE_SECS, 100) == 0
            assert await db.repo.purge_turns(runner, 0, 100) == 1
        assert await _exists(db, ended_now) == [False]

    async def test_a_batch_takes_the_oldest_first_and_at_most_limit(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turns = []
        for _ in range(3):
            turns.append(await db.finish(await db.create()))
            await turnstore_backend.advance_time(10)
        async with db.store.connection() as runner:
            assert await db.repo.purge_turns(runner, 0, 2) == 2
        assert await _exists(db, *turns) == [False, False, True]

    async def test_skips_a_row_another_transaction_holds(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        held = await db.finish(await db.create())
        free = await db.finish(await db.create())
        async with db.store.transaction() as holder:
            assert (
                await db.repo.find_latest_for_update(holder, ALLOW, held.tenant_id, held.chat_id)
                == held
            )
            async with db.store.connection() as runner:
                assert await bounded(db.repo.purge_turns(runner, 0, 100)) == 1
        assert await _exists(db, held, free) == [True, False]
        async with db.store.connection() as runner:
            assert await db.repo.purge_turns(runner, 0, 100) == 1

    async def test_a_rolled_back_purge_leaves_every_row(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.finish(await db.create())

        async def purge_then_fail() -> None:
            async with db.store.transaction() as runner:
                assert await db.repo.purge_turns(runner, 0, 100) == 1
                assert await db.repo.get_turn(runner, ALLOW, turn.id) is None
                raise Planted

        with pytest.raises(Planted):
            await purge_then_fail()
        assert await _exists(db, turn) == [True]
        assert await db.reload(turn) == turn

    async def test_a_purged_request_id_can_start_again(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.finish(await db.create())
        async with db.store.connection() as runner:
            assert await db.repo.purge_turns(runner, 0, 100) >= 1
        again = await db.create(
            tenant_id=turn.tenant_id, chat_id=turn.chat_id, request_id=turn.request_id
        )
        assert again.state is TurnState.RUNNING
        assert await db.latest(turn.tenant_id, turn.chat_id) == again

    @pytest.mark.parametrize(("age", "limit"), [(-1, 1), (0, 0), (0, 100_001), (True, 1)])
    async def test_refuses_bad_arguments(
        self, turnstore_backend: BackendHarness, age: int, limit: int
    ) -> None:
        db = Backend(turnstore_backend)
        async with db.store.connection() as runner:
            with pytest.raises(InvalidParameterError):
                await db.repo.purge_turns(runner, age, limit)

    async def test_the_retention_module_purges_in_batches_and_reports(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turns = [await db.finish(await db.create()) for _ in range(5)]
        await turnstore_backend.advance_time(LONG_AGO_SECS)
        age = timedelta(seconds=AGE_SECS)
        dry = await purge(db.store, age, batch_size=2, dry_run=True)
        assert (dry.matched, dry.deleted, dry.dry_run) == (5, 0, True)
        assert await _exists(db, *turns) == [True] * 5
        seen: list[int] = []
        report = await purge(db.store, age, batch_size=2, progress=seen.append)
        assert (report.deleted, report.batches) == (5, 3)
        assert seen == [2, 4, 5]
        assert await _exists(db, *turns) == [False] * 5
        with pytest.raises(InvalidParameterError):
            await purge(db.store, timedelta(seconds=-1))


@pytest.mark.asyncio
class TestEraseTenant:
    async def test_deletes_every_turn_of_the_tenant_running_ones_included(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        tenant_id = uuid4()
        done = await db.finish(await db.create(tenant_id=tenant_id))
        deleted = await db.delete(await db.finish(await db.create(tenant_id=tenant_id)))
        running = await db.create(tenant_id=tenant_id)
        other = await db.create()
        async with db.store.connection() as runner:
            assert await db.repo.count_tenant_turns(runner, tenant_id) == 3
            assert await db.repo.erase_tenant_turns(runner, tenant_id, 2) == 2
            assert await db.repo.erase_tenant_turns(runner, tenant_id, 2) == 1
            assert await db.repo.erase_tenant_turns(runner, tenant_id, 2) == 0
            assert await db.repo.count_tenant_turns(runner, tenant_id) == 0
        assert await _exists(db, done, deleted, running) == [False] * 3
        assert await _exists(db, other) == [True]

    async def test_waits_for_a_row_another_transaction_holds(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.finish(await db.create())

        async def erase() -> int:
            async with db.store.connection() as runner:
                return await db.repo.erase_tenant_turns(runner, turn.tenant_id, 100)

        async with db.store.transaction() as holder:
            await db.repo.find_latest_for_update(holder, ALLOW, turn.tenant_id, turn.chat_id)
            eraser = spawn(erase)
            done = await wait_tasks([eraser], BLOCK_PROBE_SECS)
            assert not done, "erasure went through a held row instead of waiting for it"
        assert await bounded_join(eraser) == 1
        assert await _exists(db, turn) == [False]

    async def test_the_retention_module_erases_and_a_dry_run_only_counts(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        tenant_id = uuid4()
        for _ in range(3):
            await db.finish(await db.create(tenant_id=tenant_id))
        await db.create(tenant_id=tenant_id)
        dry = await erase_tenant(db.store, tenant_id, dry_run=True)
        assert (dry.matched, dry.deleted) == (4, 0)
        report = await erase_tenant(db.store, tenant_id, batch_size=3)
        assert (report.deleted, report.batches) == (4, 2)
        async with db.store.connection() as runner:
            assert await db.repo.count_tenant_turns(runner, tenant_id) == 0
            page = await db.repo.list_turns(runner, ALLOW, tenant_id, uuid4())
        assert page.turns == []
        assert make_params(tenant_id=tenant_id).tenant_id == tenant_id
