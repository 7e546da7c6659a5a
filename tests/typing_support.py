"""What ``tests/unit/test_typing.py`` and ``tests/postgres/test_typing_postgres.py`` share:
every repository method driven through the protocol, type-checked like user code."""

from __future__ import annotations

from typing import TypeVar
from uuid import UUID, uuid4

from typing_extensions import assert_type

from turnstore import (
    AccessScope,
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    RequesterType,
    ToolCallType,
    Turn,
    TurnState,
    TurnStore,
    UpdatePreflightParams,
)

__all__ = ["RunnerT", "exercise"]

RunnerT = TypeVar("RunnerT")


async def exercise(store: TurnStore[RunnerT], tenant: UUID, user: UUID) -> None:
    """Every method through the protocol, with the return type it promises."""
    repo = store.turns
    scope = AccessScope.for_tenant(tenant)
    chat, request = uuid4(), uuid4()
    params = CreateTurnParams(
        id=uuid4(),
        tenant_id=tenant,
        chat_id=chat,
        request_id=request,
        requester_type=RequesterType.USER,
        requester_user_id=user,
    )
    async with store.transaction() as runner:
        assert_type(runner, RunnerT)
        turn = await repo.create_turn(runner, scope, params)
        assert_type(turn, Turn)
        found = await repo.find_by_chat_and_request_id(runner, scope, tenant, chat, request)
        assert_type(found, Turn | None)
        running = await repo.find_running_by_chat_id(runner, scope, tenant, chat)
        assert_type(running, Turn | None)
        touched = await repo.update_progress_at(runner, scope, turn.id)
        assert_type(touched, int)
        touched_many = await repo.touch_turns(runner, [(scope, turn.id)])
        assert_type(touched_many, list[bool])
        preflight = UpdatePreflightParams(
            turn_id=turn.id,
            reserve_tokens=10,
            max_output_tokens_applied=5,
            reserved_credits_micro=1,
            policy_version_applied=1,
            effective_model="m",
            minimal_generation_floor_applied=1,
        )
        assert_type(await repo.update_preflight_fields(runner, scope, preflight), int)
        await repo.increment_tool_calls(runner, scope, turn.id, ToolCallType.WEB_SEARCH)
        await repo.set_assistant_message_id(runner, scope, turn.id, uuid4())
        orphans = await repo.find_orphan_candidates(runner, 60, 10)
        assert_type(orphans, list[Turn])
        assert_type(await repo.cas_finalize_orphan(runner, turn.id, 60), int)
        complete = CasCompleteParams(turn_id=turn.id, assistant_message_id=uuid4())
        assert_type(await repo.cas_update_completed(runner, scope, complete), int)
        cancel = CasTerminalParams(turn_id=turn.id, state=TurnState.CANCELLED)
        assert_type(await repo.cas_update_state(runner, scope, cancel), int)
        assert_type(await repo.find_latest_turn(runner, scope, tenant, chat), Turn | None)
        assert_type(await repo.find_latest_for_update(runner, scope, tenant, chat), Turn | None)
        await repo.soft_delete(runner, scope, turn.id, None)
    async with store.connection() as runner:
        assert_type(runner, RunnerT)
        after = await repo.find_by_chat_and_request_id(runner, scope, tenant, chat, request)
    assert found == turn
    assert running == turn
    assert (touched, orphans) == (1, [])
    assert after is not None
    assert after.state is TurnState.COMPLETED
    assert after.deleted_at is not None
