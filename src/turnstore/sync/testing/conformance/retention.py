# WARNING: this file is generated from src/turnstore/testing/conformance/retention.py by tools/async_to_sync.py; do not edit.
"""Conformance of retention: ``purge_turns`` / ``count_purgeable`` and the erasure of a
tenant (``erase_tenant_turns`` / ``count_tenant_turns``), and ``turnstore.sync.retention`` over
them."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest

from turnstore._compat_sync import spawn, wait_tasks
from turnstore.errors import InvalidParameterError
from turnstore.model import Turn, TurnState
from turnstore.sync.retention import erase_tenant, purge
from turnstore.sync.testing.backends import BackendHarness
from turnstore.sync.testing.conformance._support import (
    ALLOW,
    BLOCK_PROBE_SECS,
    Backend,
    Planted,
    bounded,
    bounded_join,
    make_params,
)

__all__ = ["TestEraseTenant", "TestPurge"]
AGE_SECS = 3600
LONG_AGO_SECS = 7200.0


def _exists(db: Backend, *turns: Turn) -> list[bool]:
    found = []
    with db.store.connection() as runner:
        for turn in turns:
            found.append(db.repo.get_turn(runner, ALLOW, turn.id) is not None)
    return found


class TestPurge:
    def test_deletes_old_terminal_turns_deleted_or_not_and_never_a_running_one(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        completed = db.finish(db.create())
        failed = db.finish(db.create(), TurnState.FAILED)
        cancelled = db.delete(db.finish(db.create(), TurnState.CANCELLED))
        running = db.create()
        running_deleted = db.delete(db.create())
        turnstore_sync_backend.advance_time(LONG_AGO_SECS)
        recent = db.finish(db.create())
        with db.store.connection() as runner:
            assert db.repo.count_purgeable(runner, AGE_SECS) == 3
            assert db.repo.purge_turns(runner, AGE_SECS, 100) == 3
            assert db.repo.count_purgeable(runner, AGE_SECS) == 0
            assert db.repo.purge_turns(runner, AGE_SECS, 100) == 0
        assert _exists(db, completed, failed, cancelled) == [False] * 3
        assert _exists(db, running, running_deleted, recent) == [True] * 3

    def test_the_age_is_counted_from_completion(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        old_start = db.create()
        turnstore_sync_backend.advance_time(LONG_AGO_SECS)
        ended_now = db.finish(old_start)
        with db.store.connection() as runner:
            assert db.repo.purge_turns(runner, AGE_SECS, 100) == 0
            assert db.repo.purge_turns(runner, 0, 100) == 1
        assert _exists(db, ended_now) == [False]

    def test_a_batch_takes_the_oldest_first_and_at_most_limit(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turns = []
        for _ in range(3):
            turns.append(db.finish(db.create()))
            turnstore_sync_backend.advance_time(10)
        with db.store.connection() as runner:
            assert db.repo.purge_turns(runner, 0, 2) == 2
        assert _exists(db, *turns) == [False, False, True]

    def test_skips_a_row_another_transaction_holds(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        held = db.finish(db.create())
        free = db.finish(db.create())
        with db.store.transaction() as holder:
            assert (
                db.repo.find_latest_for_update(holder, ALLOW, held.tenant_id, held.chat_id) == held
            )
            with db.store.connection() as runner:
                assert bounded(db.repo.purge_turns(runner, 0, 100)) == 1
        assert _exists(db, held, free) == [True, False]
        with db.store.connection() as runner:
            assert db.repo.purge_turns(runner, 0, 100) == 1

    def test_a_rolled_back_purge_leaves_every_row(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.finish(db.create())

        def purge_then_fail() -> None:
            with db.store.transaction() as runner:
                assert db.repo.purge_turns(runner, 0, 100) == 1
                assert db.repo.get_turn(runner, ALLOW, turn.id) is None
                raise Planted

        with pytest.raises(Planted):
            purge_then_fail()
        assert _exists(db, turn) == [True]
        assert db.reload(turn) == turn

    def test_a_purged_request_id_can_start_again(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.finish(db.create())
        with db.store.connection() as runner:
            assert db.repo.purge_turns(runner, 0, 100) >= 1
        again = db.create(
            tenant_id=turn.tenant_id, chat_id=turn.chat_id, request_id=turn.request_id
        )
        assert again.state is TurnState.RUNNING
        assert db.latest(turn.tenant_id, turn.chat_id) == again

    @pytest.mark.parametrize(("age", "limit"), [(-1, 1), (0, 0), (0, 100001), (True, 1)])
    def test_refuses_bad_arguments(
        self, turnstore_sync_backend: BackendHarness, age: int, limit: int
    ) -> None:
        db = Backend(turnstore_sync_backend)
        with db.store.connection() as runner:
            with pytest.raises(InvalidParameterError):
                db.repo.purge_turns(runner, age, limit)

    def test_the_retention_module_purges_in_batches_and_reports(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turns = [db.finish(db.create()) for _ in range(5)]
        turnstore_sync_backend.advance_time(LONG_AGO_SECS)
        age = timedelta(seconds=AGE_SECS)
        dry = purge(db.store, age, batch_size=2, dry_run=True)
        assert (dry.matched, dry.deleted, dry.dry_run) == (5, 0, True)
        assert _exists(db, *turns) == [True] * 5
        seen: list[int] = []
        report = purge(db.store, age, batch_size=2, progress=seen.append)
        assert (report.deleted, report.batches) == (5, 3)
        assert seen == [2, 4, 5]
        assert _exists(db, *turns) == [False] * 5
        with pytest.raises(InvalidParameterError):
            purge(db.store, timedelta(seconds=-1))


class TestEraseTenant:
    def test_deletes_every_turn_of_the_tenant_running_ones_included(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        tenant_id = uuid4()
        done = db.finish(db.create(tenant_id=tenant_id))
        deleted = db.delete(db.finish(db.create(tenant_id=tenant_id)))
        running = db.create(tenant_id=tenant_id)
        other = db.create()
        with db.store.connection() as runner:
            assert db.repo.count_tenant_turns(runner, tenant_id) == 3
            assert db.repo.erase_tenant_turns(runner, tenant_id, 2) == 2
            assert db.repo.erase_tenant_turns(runner, tenant_id, 2) == 1
            assert db.repo.erase_tenant_turns(runner, tenant_id, 2) == 0
            assert db.repo.count_tenant_turns(runner, tenant_id) == 0
        assert _exists(db, done, deleted, running) == [False] * 3
        assert _exists(db, other) == [True]

    def test_waits_for_a_row_another_transaction_holds(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.finish(db.create())

        def erase() -> int:
            with db.store.connection() as runner:
                return db.repo.erase_tenant_turns(runner, turn.tenant_id, 100)

        with db.store.transaction() as holder:
            db.repo.find_latest_for_update(holder, ALLOW, turn.tenant_id, turn.chat_id)
            eraser = spawn(erase)
            done = wait_tasks([eraser], BLOCK_PROBE_SECS)
            assert not done, "erasure went through a held row instead of waiting for it"
        assert bounded_join(eraser) == 1
        assert _exists(db, turn) == [False]

    def test_the_retention_module_erases_and_a_dry_run_only_counts(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        tenant_id = uuid4()
        for _ in range(3):
            db.finish(db.create(tenant_id=tenant_id))
        db.create(tenant_id=tenant_id)
        dry = erase_tenant(db.store, tenant_id, dry_run=True)
        assert (dry.matched, dry.deleted) == (4, 0)
        report = erase_tenant(db.store, tenant_id, batch_size=3)
        assert (report.deleted, report.batches) == (4, 2)
        with db.store.connection() as runner:
            assert db.repo.count_tenant_turns(runner, tenant_id) == 0
            page = db.repo.list_turns(runner, ALLOW, tenant_id, uuid4())
        assert page.turns == []
        assert make_params(tenant_id=tenant_id).tenant_id == tenant_id
