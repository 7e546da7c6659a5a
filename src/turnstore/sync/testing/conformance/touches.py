# WARNING: this file is generated from src/turnstore/testing/conformance/touches.py by tools/async_to_sync.py; do not edit.
"""Conformance of ``touch_turns``: the keep-alive hub's one statement per tick
(docs/design.md, *Keep-alive hub*). Every target is checked against its own scope; a turn
no target's scope permits is not touched and is reported as not running."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest

from turnstore.errors import InvalidParameterError
from turnstore.model import Turn, TurnState
from turnstore.scope import MAX_TOUCH_TARGETS, AccessScope, ScopeConstraint, ScopeFilter
from turnstore.sync.testing.backends import BackendHarness
from turnstore.sync.testing.conformance._support import ALLOW, Backend, Planted

__all__ = ["TestTouchTurns"]


def _both(tenant_id: UUID, turn_id: UUID) -> AccessScope:
    """A constraint naming the tenant AND the turn."""
    return AccessScope.from_constraints(
        [
            ScopeConstraint(
                [ScopeFilter.eq("owner_tenant_id", tenant_id), ScopeFilter.eq("id", turn_id)]
            )
        ]
    )


def _unknown_property(turn: Turn) -> AccessScope:
    return AccessScope.from_constraints(
        [ScopeConstraint([ScopeFilter.eq("chat_id", turn.chat_id)])]
    )


def _touched(before: Turn, after: Turn) -> bool:
    """``after`` is ``before`` with a later ``last_progress_at`` and ``updated_at`` only."""
    assert before.last_progress_at is not None
    assert after.last_progress_at is not None
    same = after.model_copy(
        update={"last_progress_at": before.last_progress_at, "updated_at": before.updated_at}
    )
    assert same == before, "touch_turns changed more than last_progress_at and updated_at"
    return after.last_progress_at > before.last_progress_at


class TestTouchTurns:
    def _touch(self, db: Backend, targets: Any) -> list[bool]:
        with db.store.connection() as runner:
            return db.repo.touch_turns(runner, targets)

    def test_touches_every_running_turn_with_one_clock_reading(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turns = [db.create() for _ in range(5)]
        targets = [(AccessScope.for_tenant(t.tenant_id), t.id) for t in turns]
        assert self._touch(db, targets) == [True] * 5
        after = [db.reload(t) for t in turns]
        assert all((_touched(b, a) for b, a in zip(turns, after, strict=True)))
        assert len({a.last_progress_at for a in after}) == 1
        assert after[0].updated_at == after[0].last_progress_at

    def test_a_turn_no_longer_running_or_missing_is_not_touched(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        running = db.create()
        states = (TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED)
        done = [db.finish(db.create(), state) for state in states]
        targets = [(ALLOW, running.id), *((ALLOW, t.id) for t in done), (ALLOW, uuid4())]
        assert self._touch(db, targets) == [True, False, False, False, False]
        for turn in done:
            assert db.reload(turn) == turn

    @pytest.mark.parametrize(
        "scope_of",
        [
            "other-tenant",
            "deny-all",
            "other-resource",
            "tenant-and-other-id",
            "other-tenant-and-id",
            "unknown-property",
            "empty-in",
        ],
    )
    def test_a_turn_outside_its_targets_scope_is_not_touched(
        self, turnstore_sync_backend: BackendHarness, scope_of: str
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        scope = {
            "other-tenant": AccessScope.for_tenant(uuid4()),
            "deny-all": AccessScope.deny_all(),
            "other-resource": AccessScope.for_resource(uuid4()),
            "tenant-and-other-id": _both(turn.tenant_id, uuid4()),
            "other-tenant-and-id": _both(uuid4(), turn.id),
            "unknown-property": _unknown_property(turn),
            "empty-in": AccessScope.for_tenants([]),
        }[scope_of]
        mine = db.create()
        targets = [(scope, turn.id), (AccessScope.for_tenant(mine.tenant_id), mine.id)]
        assert self._touch(db, targets) == [False, True]
        assert db.reload(turn) == turn

    @pytest.mark.parametrize(
        "scope_of", ["tenant", "tenants", "resource", "tenant-and-id", "allow-all", "or"]
    )
    def test_a_turn_its_targets_scope_permits_is_touched(
        self, turnstore_sync_backend: BackendHarness, scope_of: str
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        scope = {
            "tenant": AccessScope.for_tenant(turn.tenant_id),
            "tenants": AccessScope.for_tenants([uuid4(), turn.tenant_id]),
            "resource": AccessScope.for_resource(turn.id),
            "tenant-and-id": _both(turn.tenant_id, turn.id),
            "allow-all": ALLOW,
            "or": AccessScope.from_constraints(
                [
                    ScopeConstraint([ScopeFilter.eq("owner_tenant_id", uuid4())]),
                    ScopeConstraint([ScopeFilter.in_("id", [uuid4(), turn.id])]),
                ]
            ),
        }[scope_of]
        assert self._touch(db, [(scope, turn.id)]) == [True]
        assert _touched(turn, db.reload(turn))

    def test_each_target_answers_for_its_own_scope(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        """Two streams of one turn under different scopes: the row is touched once (the
        permitted target), and only the permitted target hears that it runs."""
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        theirs = AccessScope.for_tenant(uuid4())
        targets = [(theirs, turn.id), (AccessScope.for_tenant(turn.tenant_id), turn.id)]
        assert self._touch(db, targets) == [False, True]
        assert self._touch(db, [(ALLOW, turn.id), (ALLOW, turn.id)]) == [True, True]

    def test_many_tenants_in_one_call(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turns = [db.create() for _ in range(20)]
        targets = [
            (AccessScope.for_tenant(turns[(i + i % 2) % len(turns)].tenant_id), t.id)
            for i, t in enumerate(turns)
        ]
        expected = [i % 2 == 0 for i in range(len(turns))]
        assert self._touch(db, targets) == expected
        for turn, hit in zip(turns, expected, strict=True):
            after = db.reload(turn)
            assert _touched(turn, after) if hit else after == turn

    def test_no_targets_is_an_empty_answer(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        assert self._touch(db, []) == []
        assert self._touch(db, ()) == []

    def test_rolled_back_touches_leave_no_trace(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        answers: list[list[bool]] = []

        def touch_then_abort() -> None:
            with db.store.transaction() as runner:
                answers.append(db.repo.touch_turns(runner, [(ALLOW, turn.id)]))
                raise Planted

        with pytest.raises(Planted):
            touch_then_abort()
        assert answers == [[True]]
        assert db.reload(turn) == turn

    @pytest.mark.parametrize(
        "targets",
        [
            "not-a-list",
            [("scope", "id")],
            [(ALLOW,)],
            [[ALLOW, uuid4()]],
            [(ALLOW, "8f0c2c4e-9c1f-4a51-9d0a-3f7f1c7b2a11")],
            [(None, uuid4())],
            [(ALLOW, uuid4())] * (MAX_TOUCH_TARGETS + 1),
        ],
        ids=["str", "strs", "short", "list-pair", "str-id", "no-scope", "too-many"],
    )
    def test_bad_targets_are_refused_and_change_nothing(
        self, turnstore_sync_backend: BackendHarness, targets: Any
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        with pytest.raises(InvalidParameterError):
            self._touch(db, [(ALLOW, turn.id), *targets] if isinstance(targets, list) else targets)
        assert db.reload(turn) == turn
