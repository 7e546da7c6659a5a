"""Conformance of ``create_turn``: the inserted row, and the conflicts it reports."""

from __future__ import annotations

from collections.abc import Callable
from uuid import uuid4

import pytest

from turnstore.errors import (
    DuplicateRequestError,
    DuplicateTurnIdError,
    GenerationInProgressError,
    ScopeDeniedError,
)
from turnstore.model import CreateTurnParams, RequesterType, TurnState
from turnstore.scope import AccessScope, ScopeConstraint, ScopeFilter
from turnstore.testing.backends import BackendHarness
from turnstore.testing.conformance._support import ALLOW, Backend, make_params

__all__ = [
    "TestCreateTurn",
]


@pytest.mark.asyncio
class TestCreateTurn:
    async def test_inserts_a_running_turn_with_the_given_fields(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        params = make_params(provider_name="openai", web_search_enabled=True)
        turn = await db.create(params)
        assert turn.id == params.id
        assert (turn.tenant_id, turn.chat_id, turn.request_id) == (
            params.tenant_id,
            params.chat_id,
            params.request_id,
        )
        assert turn.requester_type is RequesterType.USER
        assert turn.requester_user_id == params.requester_user_id
        assert turn.state is TurnState.RUNNING
        assert turn.provider_name == "openai"
        assert turn.web_search_enabled is True
        assert (
            turn.web_search_completed_count,
            turn.code_interpreter_completed_count,
            turn.file_search_completed_count,
        ) == (0, 0, 0)
        assert turn.deleted_at is None
        assert turn.completed_at is None
        assert turn.error_code is None
        assert turn.assistant_message_id is None
        assert await db.reload(turn) == turn

    async def test_stores_a_system_turn_and_preflight_fields(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        params = CreateTurnParams(
            id=uuid4(),
            tenant_id=uuid4(),
            chat_id=uuid4(),
            request_id=uuid4(),
            requester_type=RequesterType.SYSTEM,
            reserve_tokens=100,
            max_output_tokens_applied=100,
            reserved_credits_micro=0,
            policy_version_applied=2**62,
            effective_model="m" * 1024,
            minimal_generation_floor_applied=2**31 - 1,
        )
        turn = await db.create(params)
        assert turn.requester_type is RequesterType.SYSTEM
        assert turn.requester_user_id is None
        assert turn.reserve_tokens == 100
        assert turn.max_output_tokens_applied == 100
        assert turn.reserved_credits_micro == 0
        assert turn.policy_version_applied == 2**62
        assert turn.effective_model == "m" * 1024
        assert turn.minimal_generation_floor_applied == 2**31 - 1
        assert await db.reload(turn) == turn

    @pytest.mark.parametrize("state", [TurnState.RUNNING, TurnState.COMPLETED, TurnState.FAILED])
    @pytest.mark.parametrize("deleted", [False, True], ids=["live", "deleted"])
    async def test_duplicate_request_raises_with_existing_id(
        self, turnstore_backend: BackendHarness, state: TurnState, deleted: bool
    ) -> None:
        db = Backend(turnstore_backend)
        first = await db.create()
        if state is not TurnState.RUNNING:
            first = await db.finish(first, state)
        if deleted:
            first = await db.delete(first)
        again = make_params(
            chat_id=first.chat_id, request_id=first.request_id, tenant_id=first.tenant_id
        )
        with pytest.raises(DuplicateRequestError) as info:
            await db.create(again)
        assert info.value.existing_turn_id == first.id
        assert (info.value.chat_id, info.value.request_id) == (first.chat_id, first.request_id)
        assert await db.reload(first) == first

    async def test_same_request_id_in_another_chat_is_a_new_turn(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        first = await db.create()
        other = await db.create(request_id=first.request_id, tenant_id=first.tenant_id)
        assert other.request_id == first.request_id
        assert other.chat_id != first.chat_id

    async def test_second_running_turn_in_chat_raises_with_running_id(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        running = await db.create()
        params = make_params(chat_id=running.chat_id, tenant_id=running.tenant_id)
        with pytest.raises(GenerationInProgressError) as info:
            await db.create(params)
        assert info.value.chat_id == running.chat_id
        assert info.value.running_turn_id == running.id
        async with db.store.connection() as runner:
            assert (
                await db.repo.find_by_chat_and_request_id(
                    runner, ALLOW, params.tenant_id, params.chat_id, params.request_id
                )
                is None
            )

    async def test_running_turn_out_of_scope_is_not_named(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        running = await db.create()
        params = make_params(chat_id=running.chat_id, tenant_id=running.tenant_id)
        async with db.store.connection() as runner:
            with pytest.raises(GenerationInProgressError) as info:
                # A scope that lets the new row in but does not see the running turn.
                await db.repo.create_turn(runner, AccessScope.for_resource(params.id), params)
        assert info.value.running_turn_id is None

    async def test_duplicate_request_out_of_scope_is_not_named(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        first = await db.finish(await db.create(), TurnState.COMPLETED)
        params = make_params(
            chat_id=first.chat_id, tenant_id=first.tenant_id, request_id=first.request_id
        )
        async with db.store.connection() as runner:
            with pytest.raises(DuplicateRequestError) as info:
                await db.repo.create_turn(runner, AccessScope.for_resource(params.id), params)
        assert info.value.existing_turn_id is None
        assert (info.value.chat_id, info.value.request_id) == (first.chat_id, first.request_id)

    @pytest.mark.parametrize(
        "end", ["completed", "failed", "cancelled", "deleted"], ids=lambda e: f"after_{e}"
    )
    async def test_new_turn_allowed_once_the_running_one_ended(
        self, turnstore_backend: BackendHarness, end: str
    ) -> None:
        db = Backend(turnstore_backend)
        first = await db.create()
        if end == "deleted":
            await db.delete(first)
        else:
            await db.finish(first, TurnState(end))
        second = await db.create(chat_id=first.chat_id, tenant_id=first.tenant_id)
        assert second.state is TurnState.RUNNING

    async def test_running_turn_in_another_chat_does_not_block(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        first = await db.create()
        second = await db.create(tenant_id=first.tenant_id)
        assert (first.state, second.state) == (TurnState.RUNNING, TurnState.RUNNING)

    async def test_duplicate_turn_id_raises(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        first = await db.create()
        with pytest.raises(DuplicateTurnIdError) as info:
            await db.create(turn_id=first.id)
        assert info.value.turn_id == first.id
        assert await db.reload(first) == first

    async def test_request_conflict_is_checked_before_running_conflict(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        running = await db.create()
        with pytest.raises(DuplicateRequestError):
            await db.create(
                chat_id=running.chat_id, tenant_id=running.tenant_id, request_id=running.request_id
            )

    @pytest.mark.parametrize(
        "scope_of",
        [
            lambda p: AccessScope.deny_all(),
            lambda p: AccessScope.for_tenant(uuid4()),
            lambda p: AccessScope.for_resource(uuid4()),
            lambda p: AccessScope.from_constraints(
                [ScopeConstraint([ScopeFilter.eq("chat_id", p.chat_id)])]
            ),
            lambda p: AccessScope.from_constraints(
                [
                    ScopeConstraint(
                        [
                            ScopeFilter.eq("owner_tenant_id", p.tenant_id),
                            ScopeFilter.eq("id", uuid4()),
                        ]
                    )
                ]
            ),
        ],
        ids=["deny_all", "other_tenant", "other_resource", "unknown_property", "and_mismatch"],
    )
    async def test_scope_denied_writes_nothing(
        self,
        turnstore_backend: BackendHarness,
        scope_of: Callable[[CreateTurnParams], AccessScope],
    ) -> None:
        db = Backend(turnstore_backend)
        params = make_params()
        async with db.store.connection() as runner:
            with pytest.raises(ScopeDeniedError) as info:
                await db.repo.create_turn(runner, scope_of(params), params)
            assert (info.value.turn_id, info.value.tenant_id) == (params.id, params.tenant_id)
            assert (
                await db.repo.find_by_chat_and_request_id(
                    runner, ALLOW, params.tenant_id, params.chat_id, params.request_id
                )
                is None
            )
        # Nothing was written: the very same turn can be created afterwards.
        assert (await db.create(params)).id == params.id

    @pytest.mark.parametrize(
        "scope_of",
        [
            lambda p: AccessScope.for_tenant(p.tenant_id),
            lambda p: AccessScope.for_tenants([uuid4(), p.tenant_id]),
            lambda p: AccessScope.for_resource(p.id),
            lambda p: AccessScope.for_resources([p.id, uuid4()]),
        ],
        ids=["tenant", "tenants", "resource", "resources"],
    )
    async def test_scope_that_permits_the_new_row(
        self,
        turnstore_backend: BackendHarness,
        scope_of: Callable[[CreateTurnParams], AccessScope],
    ) -> None:
        db = Backend(turnstore_backend)
        params = make_params()
        async with db.store.connection() as runner:
            turn = await db.repo.create_turn(runner, scope_of(params), params)
        assert turn.id == params.id
