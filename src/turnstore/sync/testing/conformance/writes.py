# WARNING: this file is generated from src/turnstore/testing/conformance/writes.py by tools/async_to_sync.py; do not edit.
"""Conformance of the writes: the CAS to a terminal state, the other writes, and the
predicates every write shares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import pytest

from turnstore.errors import TurnNotFoundError
from turnstore.model import ToolCallType, Turn, TurnState
from turnstore.scope import AccessScope
from turnstore.sync.repository import TurnRepository
from turnstore.sync.testing.backends import BackendHarness
from turnstore.sync.testing.conformance._support import (
    ALLOW,
    STALE_SECS,
    TIMEOUT_SECS,
    Backend,
    complete_params,
    preflight_params,
    terminal_params,
    unchanged,
)

__all__ = [
    "RUNNING_ONLY_WRITES",
    "WRITES",
    "TestCasUpdateCompleted",
    "TestCasUpdateState",
    "TestIncrementToolCalls",
    "TestSetAssistantMessageId",
    "TestSoftDelete",
    "TestUpdatePreflightFields",
    "TestUpdateProgressAt",
    "TestWritePredicates",
    "WriteCase",
]


class TestCasUpdateState:
    @pytest.mark.parametrize("state", [TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED])
    def test_running_to_terminal(
        self, turnstore_sync_backend: BackendHarness, state: TurnState
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        params = terminal_params(
            turn, state, error_detail="detail" if state is not TurnState.COMPLETED else None
        )
        with db.store.connection() as runner:
            assert db.repo.cas_update_state(runner, ALLOW, params) == 1
        after = db.reload(turn)
        assert after.state is state
        assert after.error_code == params.error_code
        assert after.error_detail == params.error_detail
        assert after.assistant_message_id == params.assistant_message_id
        assert after.completed_at is not None
        assert after.completed_at >= after.started_at
        assert after.updated_at > turn.updated_at

    def test_sets_provider_response_id_when_given(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        params = terminal_params(turn, TurnState.COMPLETED, provider_response_id="resp_1")
        with db.store.connection() as runner:
            assert db.repo.cas_update_state(runner, ALLOW, params) == 1
        after = db.reload(turn)
        assert after.provider_response_id == "resp_1"
        assert after.assistant_message_id == params.assistant_message_id

    def test_keeps_message_id_when_not_given(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        message_id = uuid4()
        with db.store.connection() as runner:
            db.repo.set_assistant_message_id(runner, ALLOW, turn.id, message_id)
            params = terminal_params(turn, TurnState.CANCELLED)
            assert db.repo.cas_update_state(runner, ALLOW, params) == 1
        assert db.reload(turn).assistant_message_id == message_id

    def test_applies_to_a_deleted_running_turn(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        """The CAS predicate is ``state = 'running'`` (rules.terminal_cas_applies), so a
        turn deleted mid-stream can still be finalized and settled."""
        db = Backend(turnstore_sync_backend)
        turn = db.delete(db.create())
        assert db.finish(turn, TurnState.CANCELLED).state is TurnState.CANCELLED


class TestCasUpdateCompleted:
    def test_running_to_completed(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        params = complete_params(turn, provider_response_id="resp_42")
        with db.store.connection() as runner:
            assert db.repo.cas_update_completed(runner, ALLOW, params) == 1
        after = db.reload(turn)
        assert after.state is TurnState.COMPLETED
        assert after.assistant_message_id == params.assistant_message_id
        assert after.provider_response_id == "resp_42"
        assert after.error_code is None
        assert after.completed_at is not None
        assert after.completed_at >= after.started_at
        assert after.updated_at > turn.updated_at


class TestSetAssistantMessageId:
    @pytest.mark.parametrize(
        "state", [TurnState.RUNNING, TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED]
    )
    def test_in_any_state(self, turnstore_sync_backend: BackendHarness, state: TurnState) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        if state is not TurnState.RUNNING:
            turn = db.finish(turn, state)
        message_id = uuid4()
        with db.store.connection() as runner:
            db.repo.set_assistant_message_id(runner, ALLOW, turn.id, message_id)
        after = db.reload(turn)
        assert after.assistant_message_id == message_id
        assert after.state is state

    def test_out_of_scope_raises(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        with db.store.connection() as runner:
            with pytest.raises(TurnNotFoundError):
                db.repo.set_assistant_message_id(
                    runner, AccessScope.for_tenant(uuid4()), turn.id, uuid4()
                )
        unchanged(turn)(db.reload(turn))


class TestSoftDelete:
    def test_sets_deleted_at_and_replacement(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        (turn,) = db.chat_of(1)
        replacement = uuid4()
        after = db.delete(turn, replacement)
        assert after.deleted_at is not None
        assert after.deleted_at >= turn.started_at
        assert after.replaced_by_request_id == replacement
        assert after.state is turn.state

    def test_without_replacement(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        (turn,) = db.chat_of(1)
        after = db.delete(turn)
        assert after.deleted_at is not None
        assert after.replaced_by_request_id is None

    def test_is_idempotent_and_keeps_the_first_delete(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        (turn,) = db.chat_of(1)
        first = db.delete(turn, uuid4())
        second = db.delete(turn, uuid4())
        assert second.deleted_at == first.deleted_at
        assert second.replaced_by_request_id == first.replaced_by_request_id

    def test_out_of_scope_raises(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        with db.store.connection() as runner:
            with pytest.raises(TurnNotFoundError):
                db.repo.soft_delete(runner, AccessScope.for_tenant(uuid4()), turn.id, None)
        unchanged(turn)(db.reload(turn))


class TestUpdateProgressAt:
    def test_renews_progress_while_running(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        assert db.touch(turn) == 1
        after = db.reload(turn)
        assert after.last_progress_at is not None
        assert turn.last_progress_at is not None
        assert after.last_progress_at > turn.last_progress_at
        assert after.state is TurnState.RUNNING


class TestUpdatePreflightFields:
    def test_writes_the_six_fields_while_running(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        params = preflight_params(turn)
        with db.store.connection() as runner:
            assert db.repo.update_preflight_fields(runner, ALLOW, params) == 1
        after = db.reload(turn)
        assert after.reserve_tokens == params.reserve_tokens
        assert after.max_output_tokens_applied == params.max_output_tokens_applied
        assert after.reserved_credits_micro == params.reserved_credits_micro
        assert after.policy_version_applied == params.policy_version_applied
        assert after.effective_model == params.effective_model
        assert after.minimal_generation_floor_applied == params.minimal_generation_floor_applied
        assert after.state is TurnState.RUNNING


class TestIncrementToolCalls:
    @pytest.mark.parametrize("tool", list(ToolCallType))
    def test_bumps_only_the_tools_counter(
        self, turnstore_sync_backend: BackendHarness, tool: ToolCallType
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        with db.store.connection() as runner:
            db.repo.increment_tool_calls(runner, ALLOW, turn.id, tool)
            db.repo.increment_tool_calls(runner, ALLOW, turn.id, tool)
        after = db.reload(turn)
        counters = {t: getattr(after, t.column) for t in ToolCallType}
        assert counters == {t: 2 if t is tool else 0 for t in ToolCallType}

    def test_deleted_running_turn_is_not_counted(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.delete(db.create())
        with db.store.connection() as runner:
            db.repo.increment_tool_calls(runner, ALLOW, turn.id, ToolCallType.FILE_SEARCH)
        unchanged(turn)(db.reload(turn))


@dataclass(frozen=True)
class WriteCase:
    """One write method, called on turn ``t`` with ``scope``.

    ``running_only``: it must not touch a terminal turn. ``noop``: what it returns when it
    does not apply. ``raises_when_absent``: a missing (or out-of-scope) turn raises
    ``TurnNotFoundError`` instead of returning ``noop``.
    """

    name: str
    call: Callable[[TurnRepository[Any], Any, AccessScope, Turn], int | None]
    running_only: bool
    noop: int | None
    raises_when_absent: bool = False

    def __str__(self) -> str:
        return self.name


WRITES = [
    WriteCase(
        "cas_update_state",
        lambda repo, r, s, t: repo.cas_update_state(r, s, terminal_params(t, TurnState.CANCELLED)),
        running_only=True,
        noop=0,
    ),
    WriteCase(
        "cas_update_completed",
        lambda repo, r, s, t: repo.cas_update_completed(r, s, complete_params(t)),
        running_only=True,
        noop=0,
    ),
    WriteCase(
        "update_progress_at",
        lambda repo, r, s, t: repo.update_progress_at(r, s, t.id),
        running_only=True,
        noop=0,
    ),
    WriteCase(
        "update_preflight_fields",
        lambda repo, r, s, t: repo.update_preflight_fields(r, s, preflight_params(t)),
        running_only=True,
        noop=0,
    ),
    WriteCase(
        "increment_tool_calls",
        lambda repo, r, s, t: repo.increment_tool_calls(r, s, t.id, ToolCallType.WEB_SEARCH),
        running_only=True,
        noop=None,
    ),
    WriteCase(
        "cas_finalize_orphan",
        lambda repo, r, s, t: repo.cas_finalize_orphan(r, t.id, TIMEOUT_SECS),
        running_only=True,
        noop=0,
    ),
    WriteCase(
        "set_assistant_message_id",
        lambda repo, r, s, t: repo.set_assistant_message_id(r, s, t.id, uuid4()),
        running_only=False,
        noop=None,
        raises_when_absent=True,
    ),
    WriteCase(
        "soft_delete",
        lambda repo, r, s, t: repo.soft_delete(r, s, t.id, uuid4()),
        running_only=False,
        noop=None,
        raises_when_absent=True,
    ),
]
RUNNING_ONLY_WRITES = [w for w in WRITES if w.running_only]


class TestWritePredicates:
    """``WHERE id = ?`` and ``AND state = 'running'`` of every write, one table for all."""

    @pytest.mark.parametrize("state", [TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED])
    @pytest.mark.parametrize("write", RUNNING_ONLY_WRITES, ids=str)
    def test_terminal_turn_is_left_alone(
        self, turnstore_sync_backend: BackendHarness, write: WriteCase, state: TurnState
    ) -> None:
        db = Backend(turnstore_sync_backend)
        done = db.finish(db.create(), state)
        turnstore_sync_backend.advance_time(STALE_SECS)
        done = db.reload(done)
        with db.store.connection() as runner:
            assert write.call(db.repo, runner, ALLOW, done) == write.noop
        unchanged(done)(db.reload(done))

    @pytest.mark.parametrize("write", WRITES, ids=str)
    def test_only_the_named_turn(
        self, turnstore_sync_backend: BackendHarness, write: WriteCase
    ) -> None:
        db = Backend(turnstore_sync_backend)
        target, bystander = (db.create(), db.create(tenant_id=uuid4()))
        turnstore_sync_backend.advance_time(STALE_SECS)
        target, bystander = (db.reload(target), db.reload(bystander))
        with db.store.connection() as runner:
            result = write.call(db.repo, runner, ALLOW, target)
        assert result == (None if write.noop is None else 1)
        assert db.reload(target) != target, f"{write.name} did not write"
        unchanged(bystander)(db.reload(bystander))

    @pytest.mark.parametrize("write", WRITES, ids=str)
    def test_missing_turn(self, turnstore_sync_backend: BackendHarness, write: WriteCase) -> None:
        db = Backend(turnstore_sync_backend)
        existing = db.create()
        ghost = existing.model_copy(update={"id": uuid4()})
        with db.store.connection() as runner:
            if write.raises_when_absent:
                with pytest.raises(TurnNotFoundError) as info:
                    write.call(db.repo, runner, ALLOW, ghost)
                assert info.value.turn_id == ghost.id
            else:
                assert write.call(db.repo, runner, ALLOW, ghost) == write.noop
        unchanged(existing)(db.reload(existing))
