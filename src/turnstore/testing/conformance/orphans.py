"""Conformance of the orphan pair: ``find_orphan_candidates`` and ``cas_finalize_orphan``."""

from __future__ import annotations

from datetime import timedelta

import pytest

from turnstore.model import Turn, TurnState
from turnstore.rules import ORPHAN_ERROR_CODE
from turnstore.testing.backends import BackendHarness
from turnstore.testing.conformance._support import (
    SET_INSTANT,
    STALE_SECS,
    TICK,
    TIMEOUT_SECS,
    Backend,
    ordered_ids,
    unchanged,
)

__all__ = [
    "TestCasFinalizeOrphan",
    "TestFindOrphanCandidates",
]


@pytest.mark.asyncio
class TestFindOrphanCandidates:
    async def test_stale_running_turns_only(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        stale = await db.create()
        finished = await db.finish(await db.create(), TurnState.FAILED)
        deleted = await db.delete(await db.create())
        await turnstore_backend.advance_time(STALE_SECS)
        fresh = await db.create()
        found = await db.orphans()
        assert stale.id in found
        assert finished.id not in found, "a terminal turn is never an orphan"
        assert deleted.id not in found, "a deleted turn is never an orphan"
        assert fresh.id not in found, "a turn with recent progress is not an orphan"
        assert found == [stale.id]

    async def test_respects_the_timeout(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        await turnstore_backend.advance_time(STALE_SECS)
        assert await db.orphans(timeout=int(STALE_SECS) + 200) == []
        assert await db.orphans(timeout=int(STALE_SECS) - 100) == [turn.id]

    async def test_progress_exactly_timeout_ago_is_stale(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        await turnstore_backend.set_time(SET_INSTANT)
        turn = await db.create()
        assert turn.last_progress_at == SET_INSTANT
        boundary = SET_INSTANT + timedelta(seconds=TIMEOUT_SECS)
        await turnstore_backend.set_time(boundary - TICK)
        assert await db.orphans() == [], "progress one microsecond short of the timeout"
        await turnstore_backend.set_time(boundary)
        assert await db.orphans() == [turn.id], "progress exactly the timeout ago is stale"

    async def test_same_progress_smaller_id_first(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        low, high = ordered_ids()
        await turnstore_backend.set_time(SET_INSTANT)
        larger = await db.create(turn_id=high)
        await turnstore_backend.set_time(SET_INSTANT)
        smaller = await db.create(turn_id=low)
        assert larger.last_progress_at == smaller.last_progress_at
        await turnstore_backend.advance_time(STALE_SECS)
        assert await db.orphans() == [smaller.id, larger.id]
        assert await db.orphans(limit=1) == [smaller.id]

    async def test_renewed_progress_is_not_an_orphan(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        await turnstore_backend.advance_time(STALE_SECS)
        assert await db.touch(turn) == 1
        assert await db.orphans() == []

    async def test_oldest_progress_first_across_tenants(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        # Ids in the opposite order of progress, and creation order unlike progress order.
        low, mid, high = ordered_ids(3)
        renewed = await db.create(turn_id=low)
        oldest = await db.create(turn_id=high)
        await turnstore_backend.advance_time(STALE_SECS)
        assert await db.touch(renewed) == 1
        middle = await db.create(turn_id=mid)
        await turnstore_backend.advance_time(STALE_SECS)
        assert len({renewed.tenant_id, oldest.tenant_id, middle.tenant_id}) == 3
        assert await db.orphans() == [oldest.id, renewed.id, middle.id]

    async def test_respects_the_limit(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turns = []
        for _ in range(3):
            turns.append(await db.create())
            await turnstore_backend.advance_time(1)
        await turnstore_backend.advance_time(STALE_SECS)
        assert await db.orphans(limit=2) == [turns[0].id, turns[1].id]
        assert await db.orphans(limit=1) == [turns[0].id]
        assert await db.orphans(limit=10) == [t.id for t in turns]

    async def test_returns_full_rows(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        await turnstore_backend.advance_time(STALE_SECS)
        async with db.store.connection() as runner:
            (found,) = await db.repo.find_orphan_candidates(runner, TIMEOUT_SECS, 10)
        assert found == await db.reload(turn)


@pytest.mark.asyncio
class TestCasFinalizeOrphan:
    async def finalize(self, db: Backend, turn: Turn, timeout: int = TIMEOUT_SECS) -> int:
        async with db.store.connection() as runner:
            return await db.repo.cas_finalize_orphan(runner, turn.id, timeout)

    async def test_fails_a_stale_turn(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        await turnstore_backend.advance_time(STALE_SECS)
        assert await self.finalize(db, turn) == 1
        after = await db.reload(turn)
        assert after.state is TurnState.FAILED
        assert after.error_code == ORPHAN_ERROR_CODE
        assert after.completed_at is not None
        assert after.completed_at >= after.started_at
        assert await self.finalize(db, turn) == 0, "a second finalizer must lose"

    async def test_progress_exactly_timeout_ago_is_failed(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        await turnstore_backend.set_time(SET_INSTANT)
        turn = await db.create()
        boundary = SET_INSTANT + timedelta(seconds=TIMEOUT_SECS)
        await turnstore_backend.set_time(boundary - TICK)
        assert await self.finalize(db, turn) == 0, "progress one microsecond short of the timeout"
        unchanged(turn)(await db.reload(turn))
        await turnstore_backend.set_time(boundary)
        assert await self.finalize(db, turn) == 1, "progress exactly the timeout ago is stale"
        after = await db.reload(turn)
        assert after.state is TurnState.FAILED
        assert after.completed_at == boundary

    async def test_renewed_progress_is_not_failed(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        await turnstore_backend.advance_time(STALE_SECS)
        async with db.store.connection() as runner:
            assert await db.repo.find_orphan_candidates(runner, TIMEOUT_SECS, 10) != []
        assert await db.touch(turn) == 1  # progress renewed between scan and CAS
        renewed = await db.reload(turn)
        assert await self.finalize(db, turn) == 0
        unchanged(renewed)(await db.reload(turn))

    async def test_respects_the_timeout(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        await turnstore_backend.advance_time(STALE_SECS)
        assert await self.finalize(db, turn, timeout=int(STALE_SECS) + 200) == 0
        assert (await db.reload(turn)).state is TurnState.RUNNING

    async def test_fresh_turn_is_not_failed(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        assert await self.finalize(db, turn) == 0
        unchanged(turn)(await db.reload(turn))

    async def test_deleted_turn_is_not_failed(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        await turnstore_backend.advance_time(STALE_SECS)
        turn = await db.delete(turn)
        assert await self.finalize(db, turn) == 0
        unchanged(turn)(await db.reload(turn))

    async def test_given_the_tenant_only_that_tenants_turn_is_failed(
        self, turnstore_backend: BackendHarness
    ) -> None:
        """The watchdog passes the candidate's tenant: the CAS then also requires it (and
        touches one partition on the partitioned layout)."""
        db = Backend(turnstore_backend)
        turn = await db.create()
        other = await db.create()
        await turnstore_backend.advance_time(STALE_SECS)
        stale = await db.reload(turn)
        async with db.store.connection() as runner:
            won = await db.repo.cas_finalize_orphan(
                runner, turn.id, TIMEOUT_SECS, tenant_id=other.tenant_id
            )
        assert won == 0, "another tenant's id never matches"
        unchanged(stale)(await db.reload(turn))
        async with db.store.connection() as runner:
            won = await db.repo.cas_finalize_orphan(
                runner, turn.id, TIMEOUT_SECS, tenant_id=turn.tenant_id
            )
        assert won == 1
        assert (await db.reload(turn)).state is TurnState.FAILED
