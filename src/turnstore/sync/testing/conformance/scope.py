# WARNING: this file is generated from src/turnstore/testing/conformance/scope.py by tools/async_to_sync.py; do not edit.
"""Conformance of scope isolation: what a scope hides, and what it permits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from uuid import uuid4

import pytest

from turnstore.errors import InvalidParameterError, ScopeDeniedError, TurnNotFoundError
from turnstore.model import ToolCallType, Turn, TurnState
from turnstore.scope import (
    MAX_SCOPE_CONSTRAINTS,
    MAX_SCOPE_FILTERS,
    AccessScope,
    ScopeConstraint,
    ScopeFilter,
)
from turnstore.sync.testing.backends import BackendHarness
from turnstore.sync.testing.conformance._support import (
    STALE_SECS,
    TIMEOUT_SECS,
    Backend,
    complete_params,
    make_params,
    preflight_params,
    terminal_params,
    unchanged,
)

__all__ = ["DENYING_SCOPES", "PERMITTING_SCOPES", "ScopeCase", "TestScopeIsolation"]


@dataclass(frozen=True)
class ScopeCase:
    """A scope built against the target turn (``t``) and an unrelated tenant's turn (``o``)."""

    name: str
    build: Callable[[Turn, Turn], AccessScope]

    def __str__(self) -> str:
        return self.name


def _constraint(*filters: ScopeFilter) -> ScopeConstraint:
    return ScopeConstraint(filters)


def _scope(*constraints: ScopeConstraint) -> AccessScope:
    return AccessScope.from_constraints(constraints)


_TENANT = "owner_tenant_id"
DENYING_SCOPES = [
    ScopeCase("deny_all", lambda t, o: AccessScope.deny_all()),
    ScopeCase("other_tenant", lambda t, o: AccessScope.for_tenant(o.tenant_id)),
    ScopeCase("other_tenants", lambda t, o: AccessScope.for_tenants([o.tenant_id, uuid4()])),
    ScopeCase("other_resource", lambda t, o: AccessScope.for_resource(o.id)),
    ScopeCase("other_resources", lambda t, o: AccessScope.for_resources([o.id, uuid4()])),
    ScopeCase("empty_tenants", lambda t, o: AccessScope.for_tenants([])),
    ScopeCase(
        "unknown_property", lambda t, o: _scope(_constraint(ScopeFilter.eq("chat_id", t.chat_id)))
    ),
    ScopeCase(
        "unknown_property_and_tenant",
        lambda t, o: _scope(
            _constraint(ScopeFilter.eq(_TENANT, t.tenant_id), ScopeFilter.eq("tenant", t.tenant_id))
        ),
    ),
    ScopeCase(
        "and_tenant_but_other_id",
        lambda t, o: _scope(
            _constraint(ScopeFilter.eq(_TENANT, t.tenant_id), ScopeFilter.eq("id", o.id))
        ),
    ),
    ScopeCase(
        "and_id_but_other_tenant",
        lambda t, o: _scope(
            _constraint(ScopeFilter.eq("id", t.id), ScopeFilter.in_(_TENANT, [o.tenant_id]))
        ),
    ),
    ScopeCase(
        "or_of_misses",
        lambda t, o: _scope(
            _constraint(ScopeFilter.eq(_TENANT, o.tenant_id)),
            _constraint(ScopeFilter.eq("id", o.id)),
        ),
    ),
]
PERMITTING_SCOPES = [
    ScopeCase("allow_all", lambda t, o: AccessScope.allow_all()),
    ScopeCase("tenant", lambda t, o: AccessScope.for_tenant(t.tenant_id)),
    ScopeCase("tenants", lambda t, o: AccessScope.for_tenants([o.tenant_id, t.tenant_id])),
    ScopeCase("resource", lambda t, o: AccessScope.for_resource(t.id)),
    ScopeCase("resources", lambda t, o: AccessScope.for_resources([o.id, t.id])),
    ScopeCase(
        "and_both_match",
        lambda t, o: _scope(
            _constraint(ScopeFilter.eq(_TENANT, t.tenant_id), ScopeFilter.in_("id", [t.id, o.id]))
        ),
    ),
    ScopeCase(
        "or_second_matches",
        lambda t, o: _scope(
            _constraint(ScopeFilter.eq(_TENANT, o.tenant_id)),
            _constraint(ScopeFilter.eq("id", t.id)),
        ),
    ),
    ScopeCase(
        "or_unknown_property_then_tenant",
        lambda t, o: _scope(
            _constraint(ScopeFilter.eq("chat_id", t.chat_id)),
            _constraint(ScopeFilter.eq(_TENANT, t.tenant_id)),
        ),
    ),
]


class TestScopeIsolation:
    @pytest.mark.parametrize("case", DENYING_SCOPES, ids=str)
    def test_foreign_scope_sees_nothing_and_changes_nothing(
        self, turnstore_sync_backend: BackendHarness, case: ScopeCase
    ) -> None:
        db = Backend(turnstore_sync_backend)
        other = db.create()
        target = db.create()
        scope = case.build(target, other)
        repo = db.repo
        with db.store.transaction() as runner:
            chat, turn_id = (target.chat_id, target.id)
            assert (
                repo.find_by_chat_and_request_id(
                    runner, scope, target.tenant_id, chat, target.request_id
                )
                is None
            )
            assert repo.find_running_by_chat_id(runner, scope, target.tenant_id, chat) is None
            assert repo.find_latest_turn(runner, scope, target.tenant_id, chat) is None
            assert repo.find_latest_for_update(runner, scope, target.tenant_id, chat) is None
            assert repo.update_progress_at(runner, scope, turn_id) == 0
            assert repo.update_preflight_fields(runner, scope, preflight_params(target)) == 0
            repo.increment_tool_calls(runner, scope, turn_id, ToolCallType.WEB_SEARCH)
            with pytest.raises(TurnNotFoundError):
                repo.set_assistant_message_id(runner, scope, turn_id, uuid4())
            with pytest.raises(TurnNotFoundError):
                repo.soft_delete(runner, scope, turn_id, uuid4())
            assert repo.cas_update_completed(runner, scope, complete_params(target)) == 0
            for state in (TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED):
                cas = terminal_params(target, state)
                assert repo.cas_update_state(runner, scope, cas) == 0
            with pytest.raises(ScopeDeniedError):
                repo.create_turn(
                    runner, scope, make_params(chat_id=uuid4(), tenant_id=target.tenant_id)
                )
        unchanged(target)(db.reload(target))
        unchanged(other)(db.reload(other))

    @pytest.mark.parametrize("case", PERMITTING_SCOPES, ids=str)
    def test_permitting_scope_reads_and_changes(
        self, turnstore_sync_backend: BackendHarness, case: ScopeCase
    ) -> None:
        db = Backend(turnstore_sync_backend)
        other = db.create()
        target = db.create()
        scope = case.build(target, other)
        repo = db.repo
        message_id = uuid4()
        with db.store.transaction() as runner:
            chat, turn_id = (target.chat_id, target.id)
            assert (
                repo.find_by_chat_and_request_id(
                    runner, scope, target.tenant_id, chat, target.request_id
                )
                == target
            )
            assert repo.find_running_by_chat_id(runner, scope, target.tenant_id, chat) == target
            assert repo.find_latest_turn(runner, scope, target.tenant_id, chat) == target
            assert repo.find_latest_for_update(runner, scope, target.tenant_id, chat) == target
            assert repo.update_progress_at(runner, scope, turn_id) == 1
            assert repo.update_preflight_fields(runner, scope, preflight_params(target)) == 1
            repo.increment_tool_calls(runner, scope, turn_id, ToolCallType.WEB_SEARCH)
            repo.set_assistant_message_id(runner, scope, turn_id, message_id)
            assert (
                repo.cas_update_state(runner, scope, terminal_params(target, TurnState.FAILED)) == 1
            )
            repo.soft_delete(runner, scope, turn_id, None)
        after = db.reload(target)
        assert after.web_search_completed_count == 1
        assert after.assistant_message_id == message_id
        assert after.reserve_tokens == preflight_params(target).reserve_tokens
        assert after.state is TurnState.FAILED
        assert after.deleted_at is not None
        unchanged(other)(db.reload(other))

    def test_cas_update_completed_in_scope(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        with db.store.connection() as runner:
            params = complete_params(turn)
            scope = AccessScope.for_tenant(turn.tenant_id)
            assert db.repo.cas_update_completed(runner, scope, params) == 1

    def test_the_largest_scope_works_and_a_larger_one_is_refused(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        """A scope at both limits (on PostgreSQL: 16,000 bound values, past which a driver
        could not carry the statement) reads and writes; one past them is refused before
        anything runs: ``ValidationError`` when built, ``InvalidParameterError`` when an
        unvalidated one (``model_construct``) reaches a call."""
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        decoy = ScopeFilter.eq("id", turn.id)
        wide = [
            _constraint(*[ScopeFilter.eq("owner_tenant_id", uuid4())] * MAX_SCOPE_FILTERS)
            for _ in range(MAX_SCOPE_CONSTRAINTS - 1)
        ]
        largest = _scope(*wide, _constraint(*[decoy] * MAX_SCOPE_FILTERS))
        with db.store.connection() as runner:
            assert db.repo.find_latest_turn(runner, largest, turn.tenant_id, turn.chat_id) == turn
            assert db.repo.update_progress_at(runner, largest, turn.id) == 1
        touched = db.reload(turn)
        with pytest.raises(ValueError, match="at most"):
            _scope(*wide, _constraint(decoy), _constraint(decoy))
        with pytest.raises(ValueError, match="at most"):
            _constraint(*[decoy] * (MAX_SCOPE_FILTERS + 1))
        oversized = AccessScope.model_construct(
            constraints=tuple([_constraint(decoy)] * 70000), unrestricted=False
        )
        with db.store.connection() as runner:
            with pytest.raises(InvalidParameterError, match="at most"):
                db.repo.find_latest_turn(runner, oversized, turn.tenant_id, turn.chat_id)
            with pytest.raises(InvalidParameterError, match="at most"):
                db.repo.update_progress_at(runner, oversized, turn.id)
        unchanged(touched)(db.reload(turn))

    def test_orphan_methods_are_unscoped(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        a, b = (db.create(), db.create())
        turnstore_sync_backend.advance_time(STALE_SECS)
        assert set(db.orphans()) == {a.id, b.id}
        with db.store.connection() as runner:
            assert db.repo.cas_finalize_orphan(runner, a.id, TIMEOUT_SECS) == 1
            assert db.repo.cas_finalize_orphan(runner, b.id, TIMEOUT_SECS) == 1
