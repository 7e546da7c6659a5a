# WARNING: this file is generated from src/turnstore/testing/conformance/orphans.py by tools/async_to_sync.py; do not edit.
"""Conformance of the orphan pair: ``find_orphan_candidates`` and ``cas_finalize_orphan``."""

from __future__ import annotations

from datetime import timedelta

from turnstore.model import Turn, TurnState
from turnstore.rules import ORPHAN_ERROR_CODE
from turnstore.sync.testing.backends import BackendHarness
from turnstore.sync.testing.conformance._support import (
    SET_INSTANT,
    STALE_SECS,
    TICK,
    TIMEOUT_SECS,
    Backend,
    ordered_ids,
    unchanged,
)

__all__ = ["TestCasFinalizeOrphan", "TestFindOrphanCandidates"]


class TestFindOrphanCandidates:
    def test_stale_running_turns_only(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        stale = db.create()
        finished = db.finish(db.create(), TurnState.FAILED)
        deleted = db.delete(db.create())
        turnstore_sync_backend.advance_time(STALE_SECS)
        fresh = db.create()
        found = db.orphans()
        assert stale.id in found
        assert finished.id not in found, "a terminal turn is never an orphan"
        assert deleted.id not in found, "a deleted turn is never an orphan"
        assert fresh.id not in found, "a turn with recent progress is not an orphan"
        assert found == [stale.id]

    def test_respects_the_timeout(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        turnstore_sync_backend.advance_time(STALE_SECS)
        assert db.orphans(timeout=int(STALE_SECS) + 200) == []
        assert db.orphans(timeout=int(STALE_SECS) - 100) == [turn.id]

    def test_progress_exactly_timeout_ago_is_stale(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turnstore_sync_backend.set_time(SET_INSTANT)
        turn = db.create()
        assert turn.last_progress_at == SET_INSTANT
        boundary = SET_INSTANT + timedelta(seconds=TIMEOUT_SECS)
        turnstore_sync_backend.set_time(boundary - TICK)
        assert db.orphans() == [], "progress one microsecond short of the timeout"
        turnstore_sync_backend.set_time(boundary)
        assert db.orphans() == [turn.id], "progress exactly the timeout ago is stale"

    def test_same_progress_smaller_id_first(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        low, high = ordered_ids()
        turnstore_sync_backend.set_time(SET_INSTANT)
        larger = db.create(turn_id=high)
        turnstore_sync_backend.set_time(SET_INSTANT)
        smaller = db.create(turn_id=low)
        assert larger.last_progress_at == smaller.last_progress_at
        turnstore_sync_backend.advance_time(STALE_SECS)
        assert db.orphans() == [smaller.id, larger.id]
        assert db.orphans(limit=1) == [smaller.id]

    def test_renewed_progress_is_not_an_orphan(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        turnstore_sync_backend.advance_time(STALE_SECS)
        assert db.touch(turn) == 1
        assert db.orphans() == []

    def test_oldest_progress_first_across_tenants(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        low, mid, high = ordered_ids(3)
        renewed = db.create(turn_id=low)
        oldest = db.create(turn_id=high)
        turnstore_sync_backend.advance_time(STALE_SECS)
        assert db.touch(renewed) == 1
        middle = db.create(turn_id=mid)
        turnstore_sync_backend.advance_time(STALE_SECS)
        assert len({renewed.tenant_id, oldest.tenant_id, middle.tenant_id}) == 3
        assert db.orphans() == [oldest.id, renewed.id, middle.id]

    def test_respects_the_limit(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turns = []
        for _ in range(3):
            turns.append(db.create())
            turnstore_sync_backend.advance_time(1)
        turnstore_sync_backend.advance_time(STALE_SECS)
        assert db.orphans(limit=2) == [turns[0].id, turns[1].id]
        assert db.orphans(limit=1) == [turns[0].id]
        assert db.orphans(limit=10) == [t.id for t in turns]

    def test_returns_full_rows(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        turnstore_sync_backend.advance_time(STALE_SECS)
        with db.store.connection() as runner:
            (found,) = db.repo.find_orphan_candidates(runner, TIMEOUT_SECS, 10)
        assert found == db.reload(turn)


class TestCasFinalizeOrphan:
    def finalize(self, db: Backend, turn: Turn, timeout: int = TIMEOUT_SECS) -> int:
        with db.store.connection() as runner:
            return db.repo.cas_finalize_orphan(runner, turn.id, timeout)

    def test_fails_a_stale_turn(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        turnstore_sync_backend.advance_time(STALE_SECS)
        assert self.finalize(db, turn) == 1
        after = db.reload(turn)
        assert after.state is TurnState.FAILED
        assert after.error_code == ORPHAN_ERROR_CODE
        assert after.completed_at is not None
        assert after.completed_at >= after.started_at
        assert self.finalize(db, turn) == 0, "a second finalizer must lose"

    def test_progress_exactly_timeout_ago_is_failed(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turnstore_sync_backend.set_time(SET_INSTANT)
        turn = db.create()
        boundary = SET_INSTANT + timedelta(seconds=TIMEOUT_SECS)
        turnstore_sync_backend.set_time(boundary - TICK)
        assert self.finalize(db, turn) == 0, "progress one microsecond short of the timeout"
        unchanged(turn)(db.reload(turn))
        turnstore_sync_backend.set_time(boundary)
        assert self.finalize(db, turn) == 1, "progress exactly the timeout ago is stale"
        after = db.reload(turn)
        assert after.state is TurnState.FAILED
        assert after.completed_at == boundary

    def test_renewed_progress_is_not_failed(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        turnstore_sync_backend.advance_time(STALE_SECS)
        with db.store.connection() as runner:
            assert db.repo.find_orphan_candidates(runner, TIMEOUT_SECS, 10) != []
        assert db.touch(turn) == 1
        renewed = db.reload(turn)
        assert self.finalize(db, turn) == 0
        unchanged(renewed)(db.reload(turn))

    def test_respects_the_timeout(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        turnstore_sync_backend.advance_time(STALE_SECS)
        assert self.finalize(db, turn, timeout=int(STALE_SECS) + 200) == 0
        assert db.reload(turn).state is TurnState.RUNNING

    def test_fresh_turn_is_not_failed(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        assert self.finalize(db, turn) == 0
        unchanged(turn)(db.reload(turn))

    def test_deleted_turn_is_not_failed(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        turnstore_sync_backend.advance_time(STALE_SECS)
        turn = db.delete(turn)
        assert self.finalize(db, turn) == 0
        unchanged(turn)(db.reload(turn))

    def test_given_the_tenant_only_that_tenants_turn_is_failed(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        """The watchdog passes the candidate's tenant: the CAS then also requires it (and
        touches one partition on the partitioned layout)."""
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        other = db.create()
        turnstore_sync_backend.advance_time(STALE_SECS)
        stale = db.reload(turn)
        with db.store.connection() as runner:
            won = db.repo.cas_finalize_orphan(
                runner, turn.id, TIMEOUT_SECS, tenant_id=other.tenant_id
            )
        assert won == 0, "another tenant's id never matches"
        unchanged(stale)(db.reload(turn))
        with db.store.connection() as runner:
            won = db.repo.cas_finalize_orphan(
                runner, turn.id, TIMEOUT_SECS, tenant_id=turn.tenant_id
            )
        assert won == 1
        assert db.reload(turn).state is TurnState.FAILED
