"""The behavioural conformance suite every ``TurnRepository`` backend must pass.

The tests drive the ``TurnStore`` / ``TurnRepository`` protocols only, through the
``turnstore_backend`` fixture of the turnstore pytest plugin, so the very same tests run on
PostgreSQL and on the in-memory fake. A host runs them against its own setup with one line
in a test module::

    from turnstore.testing.conformance import *  # noqa: F403

Each WHERE condition of each method has a test that fails when the condition is dropped;
concurrency is exercised with real tasks, each on its own runner, ordered by events.
Time passes through ``BackendHarness.advance_time``, never through sleeping; tests that
need an exact instant (a predicate's boundary, two turns started at the same time) put the
clock there with ``BackendHarness.set_time``.

The concurrency tests hold up to ``CONCURRENCY + 2`` connections at once: a host pool
given to the suite needs at least that many.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest

from turnstore.errors import (
    DuplicateRequestError,
    DuplicateTurnIdError,
    GenerationInProgressError,
    InvalidParameterError,
    ScopeDeniedError,
    TurnNotFoundError,
    TurnStoreError,
)
from turnstore.model import (
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    RequesterType,
    ToolCallType,
    Turn,
    TurnState,
    UpdatePreflightParams,
)
from turnstore.repository import TurnRepository, TurnStore
from turnstore.rules import ORPHAN_ERROR_CODE
from turnstore.scope import AccessScope, ScopeConstraint, ScopeFilter
from turnstore.testing.backends import BackendHarness

__all__ = [
    "CONCURRENCY",
    "TestCasFinalizeOrphan",
    "TestCasUpdateCompleted",
    "TestCasUpdateState",
    "TestConcurrency",
    "TestCreateTurn",
    "TestFindByChatAndRequestId",
    "TestFindLatestForUpdate",
    "TestFindLatestTurn",
    "TestFindOrphanCandidates",
    "TestFindRunningByChatId",
    "TestIncrementToolCalls",
    "TestScopeIsolation",
    "TestSetAssistantMessageId",
    "TestSoftDelete",
    "TestTimestamps",
    "TestTransactions",
    "TestUpdatePreflightFields",
    "TestUpdateProgressAt",
    "TestWritePredicates",
    "complete_params",
    "make_params",
    "ordered_ids",
    "preflight_params",
]

#: How many concurrent tasks (each with its own connection) the concurrency tests start.
CONCURRENCY = 8
#: A guard against hangs only: no test waits this long unless the backend is broken.
HANG_TIMEOUT_SECS = 30.0
#: How long a test gives a second locker to (wrongly) get through a held lock. A correct
#: backend never gets through, however long this is; it only bounds a false pass.
BLOCK_PROBE_SECS = 0.5
#: An orphan timeout for the tests, and a span of time comfortably beyond it.
TIMEOUT_SECS = 300
STALE_SECS = 400.0
#: The resolution of ``timestamptz``: the least step between two distinct instants.
TICK = timedelta(microseconds=1)
#: An instant for tests that set the clock (any would do; a fixed one reads well).
SET_INSTANT = datetime(2031, 5, 17, 12, 0, tzinfo=timezone.utc)

ALLOW = AccessScope.allow_all()
T = TypeVar("T")


class Planted(Exception):
    """Raised on purpose inside a transaction to make it roll back."""


# --- helpers ---------------------------------------------------------------------------


def ordered_ids(n: int = 2) -> list[UUID]:
    """``n`` fresh ids in ascending order (PostgreSQL's uuid order is the same)."""
    return sorted(uuid4() for _ in range(n))


def make_params(
    *,
    tenant_id: UUID | None = None,
    chat_id: UUID | None = None,
    request_id: UUID | None = None,
    turn_id: UUID | None = None,
    user_id: UUID | None = None,
    **fields: Any,
) -> CreateTurnParams:
    """``CreateTurnParams`` for a user's turn, every id fresh unless given."""
    return CreateTurnParams(
        id=turn_id or uuid4(),
        tenant_id=tenant_id or uuid4(),
        chat_id=chat_id or uuid4(),
        request_id=request_id or uuid4(),
        requester_type=RequesterType.USER,
        requester_user_id=user_id or uuid4(),
        **fields,
    )


def complete_params(turn: Turn, **fields: Any) -> CasCompleteParams:
    return CasCompleteParams(turn_id=turn.id, assistant_message_id=uuid4(), **fields)


def terminal_params(turn: Turn, state: TurnState, **fields: Any) -> CasTerminalParams:
    """A valid CAS to ``state``: an error code for ``failed``, a message for ``completed``."""
    if state is TurnState.FAILED:
        fields.setdefault("error_code", "provider_error")
    if state is TurnState.COMPLETED:
        fields.setdefault("assistant_message_id", uuid4())
    return CasTerminalParams(turn_id=turn.id, state=state, **fields)


def preflight_params(turn: Turn) -> UpdatePreflightParams:
    return UpdatePreflightParams(
        turn_id=turn.id,
        reserve_tokens=4096,
        max_output_tokens_applied=2048,
        reserved_credits_micro=1_500_000,
        policy_version_applied=7,
        effective_model="model-x",
        minimal_generation_floor_applied=64,
    )


async def bounded(awaitable: Awaitable[T]) -> T:
    """Await with a generous timeout, so a broken backend fails instead of hanging."""
    return await asyncio.wait_for(awaitable, HANG_TIMEOUT_SECS)


class Gate:
    """Releases all parties at once when the last one arrives (``asyncio.Barrier`` is 3.11+)."""

    def __init__(self, parties: int) -> None:
        self._parties = parties
        self._arrived = 0
        self._open = asyncio.Event()

    async def arrive(self) -> None:
        self._arrived += 1
        if self._arrived == self._parties:
            self._open.set()
        await bounded(self._open.wait())


@dataclass
class Backend:
    """The store under test and shortcuts that run one call on its own autocommit runner."""

    harness: BackendHarness

    @property
    def store(self) -> TurnStore[Any]:
        return self.harness.store

    @property
    def repo(self) -> TurnRepository[Any]:
        return self.harness.store.turns

    async def create(self, params: CreateTurnParams | None = None, **kwargs: Any) -> Turn:
        async with self.store.connection() as runner:
            return await self.repo.create_turn(runner, ALLOW, params or make_params(**kwargs))

    async def reload(self, turn: Turn) -> Turn:
        """The row as stored now (deleted rows included), seen through allow-all."""
        async with self.store.connection() as runner:
            found = await self.repo.find_by_chat_and_request_id(
                runner, ALLOW, turn.chat_id, turn.request_id
            )
        assert found is not None, f"turn {turn.id} vanished"
        return found

    async def finish(self, turn: Turn, state: TurnState = TurnState.COMPLETED) -> Turn:
        async with self.store.connection() as runner:
            assert await self.repo.cas_update_state(runner, ALLOW, terminal_params(turn, state))
        return await self.reload(turn)

    async def delete(self, turn: Turn, replaced_by: UUID | None = None) -> Turn:
        async with self.store.connection() as runner:
            await self.repo.soft_delete(runner, ALLOW, turn.id, replaced_by)
        return await self.reload(turn)

    async def touch(self, turn: Turn) -> int:
        async with self.store.connection() as runner:
            return await self.repo.update_progress_at(runner, ALLOW, turn.id)

    async def orphans(self, limit: int = 100, timeout: int = TIMEOUT_SECS) -> list[UUID]:
        async with self.store.connection() as runner:
            found = await self.repo.find_orphan_candidates(runner, timeout, limit)
        return [t.id for t in found]

    async def latest(self, chat_id: UUID, scope: AccessScope = ALLOW) -> Turn | None:
        async with self.store.connection() as runner:
            return await self.repo.find_latest_turn(runner, scope, chat_id)

    async def latest_for_update(self, chat_id: UUID, scope: AccessScope = ALLOW) -> Turn | None:
        async with self.store.transaction() as runner:
            return await self.repo.find_latest_for_update(runner, scope, chat_id)

    async def chat_started_at_once(self, larger_id_first: bool) -> tuple[Turn, Turn]:
        """Two turns of one chat with the same ``started_at`` (a clock stepped back between
        them), the first finished; the larger id is created first or second as asked."""
        low, high = ordered_ids()
        ids = (high, low) if larger_id_first else (low, high)
        chat_id, tenant_id = uuid4(), uuid4()
        await self.harness.set_time(SET_INSTANT)
        first = await self.finish(
            await self.create(turn_id=ids[0], chat_id=chat_id, tenant_id=tenant_id)
        )
        await self.harness.set_time(SET_INSTANT)
        second = await self.create(turn_id=ids[1], chat_id=chat_id, tenant_id=tenant_id)
        assert first.started_at == second.started_at == SET_INSTANT
        return first, second

    async def chat_of(self, n: int, *, finish: bool = True) -> list[Turn]:
        """``n`` turns of one chat created one after another (all but the last finished)."""
        chat_id, tenant_id = uuid4(), uuid4()
        turns = []
        for i in range(n):
            turn = await self.create(chat_id=chat_id, tenant_id=tenant_id)
            if finish or i < n - 1:
                turn = await self.finish(turn)
            turns.append(turn)
        return turns


def unchanged(before: Turn) -> Callable[[Turn], None]:
    def check(after: Turn) -> None:
        assert after == before, "a call that should change nothing changed the row"

    return check


# --- create_turn -----------------------------------------------------------------------


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
                    runner, ALLOW, params.chat_id, params.request_id
                )
                is None
            )

    async def test_running_turn_out_of_scope_is_not_named(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        running = await db.create()
        params = make_params(chat_id=running.chat_id)
        async with db.store.connection() as runner:
            with pytest.raises(GenerationInProgressError) as info:
                await db.repo.create_turn(runner, AccessScope.for_tenant(params.tenant_id), params)
        assert info.value.running_turn_id is None

    async def test_duplicate_request_out_of_scope_is_not_named(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        first = await db.finish(await db.create(), TurnState.COMPLETED)
        params = make_params(chat_id=first.chat_id, request_id=first.request_id)
        async with db.store.connection() as runner:
            with pytest.raises(DuplicateRequestError) as info:
                await db.repo.create_turn(runner, AccessScope.for_tenant(params.tenant_id), params)
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
            await db.create(chat_id=running.chat_id, request_id=running.request_id)

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
                    runner, ALLOW, params.chat_id, params.request_id
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


# --- reads -----------------------------------------------------------------------------


@pytest.mark.asyncio
class TestFindByChatAndRequestId:
    async def test_finds_by_both_keys_only(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.finish(await db.create())
        other_chat = await db.create(request_id=turn.request_id)
        other_request = await db.create(chat_id=turn.chat_id, tenant_id=turn.tenant_id)
        async with db.store.connection() as runner:
            find = db.repo.find_by_chat_and_request_id
            assert await find(runner, ALLOW, turn.chat_id, turn.request_id) == turn
            assert await find(runner, ALLOW, other_chat.chat_id, turn.request_id) == other_chat
            assert await find(runner, ALLOW, turn.chat_id, other_request.request_id) == (
                other_request
            )
            assert await find(runner, ALLOW, turn.chat_id, uuid4()) is None
            assert await find(runner, ALLOW, uuid4(), turn.request_id) is None

    async def test_includes_deleted_turns(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.delete(await db.finish(await db.create()))
        assert turn.deleted_at is not None
        async with db.store.connection() as runner:
            found = await db.repo.find_by_chat_and_request_id(
                runner, ALLOW, turn.chat_id, turn.request_id
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
            assert await db.repo.find_running_by_chat_id(runner, ALLOW, older.chat_id) == running
            assert await db.repo.find_running_by_chat_id(runner, ALLOW, uuid4()) is None

    @pytest.mark.parametrize("state", [TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED])
    async def test_excludes_terminal_turns(
        self, turnstore_backend: BackendHarness, state: TurnState
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.finish(await db.create(), state)
        async with db.store.connection() as runner:
            assert await db.repo.find_running_by_chat_id(runner, ALLOW, turn.chat_id) is None

    async def test_excludes_deleted_running_turns(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.delete(await db.create())
        assert turn.state is TurnState.RUNNING
        async with db.store.connection() as runner:
            assert await db.repo.find_running_by_chat_id(runner, ALLOW, turn.chat_id) is None


@pytest.mark.asyncio
class TestFindLatestTurn:
    async def test_orders_by_started_at_not_by_id(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        low, high = ordered_ids()
        chat_id, tenant_id = uuid4(), uuid4()
        first = await db.finish(await db.create(turn_id=high, chat_id=chat_id, tenant_id=tenant_id))
        second = await db.create(turn_id=low, chat_id=chat_id, tenant_id=tenant_id)
        assert await db.latest(chat_id) == second
        # Later writes to the older turn do not make it the latest.
        async with db.store.connection() as runner:
            await db.repo.set_assistant_message_id(runner, ALLOW, first.id, uuid4())
        assert await db.latest(chat_id) == second

    @pytest.mark.parametrize(
        "larger_id_first", [True, False], ids=["larger-first", "larger-second"]
    )
    async def test_same_started_at_the_larger_id_is_latest(
        self, turnstore_backend: BackendHarness, larger_id_first: bool
    ) -> None:
        db = Backend(turnstore_backend)
        first, second = await db.chat_started_at_once(larger_id_first)
        assert (await db.latest(first.chat_id)) == max(first, second, key=lambda t: t.id)

    async def test_by_started_at_not_by_progress(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        chat_id, tenant_id = uuid4(), uuid4()
        first = await db.finish(await db.create(chat_id=chat_id, tenant_id=tenant_id))
        second = await db.create(chat_id=chat_id, tenant_id=tenant_id)
        # The older turn gets no progress (it is terminal), the newer one does.
        assert await db.touch(second) == 1
        second = await db.reload(second)
        assert await db.latest(chat_id) == second
        assert first.started_at < second.started_at

    async def test_excludes_deleted_turns(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        first, second = await db.chat_of(2)
        await db.delete(second)
        assert await db.latest(first.chat_id) == first
        await db.delete(first)
        assert await db.latest(first.chat_id) is None

    async def test_only_the_given_chat(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        (mine,) = await db.chat_of(1)
        await db.create(tenant_id=mine.tenant_id)  # a newer turn of another chat
        assert await db.latest(mine.chat_id) == mine
        assert await db.latest(uuid4()) is None

    async def test_the_latest_in_scope(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        mine = await db.finish(await db.create())
        foreign = await db.create(chat_id=mine.chat_id)  # another tenant's, newer
        assert await db.latest(mine.chat_id) == foreign
        assert await db.latest(mine.chat_id, AccessScope.for_tenant(mine.tenant_id)) == mine


# --- CAS to a terminal state -----------------------------------------------------------


@pytest.mark.asyncio
class TestCasUpdateState:
    @pytest.mark.parametrize("state", [TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED])
    async def test_running_to_terminal(
        self, turnstore_backend: BackendHarness, state: TurnState
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        params = terminal_params(
            turn, state, error_detail="detail" if state is not TurnState.COMPLETED else None
        )
        async with db.store.connection() as runner:
            assert await db.repo.cas_update_state(runner, ALLOW, params) == 1
        after = await db.reload(turn)
        assert after.state is state
        assert after.error_code == params.error_code
        assert after.error_detail == params.error_detail
        assert after.assistant_message_id == params.assistant_message_id
        assert after.completed_at is not None
        assert after.completed_at >= after.started_at
        assert after.updated_at > turn.updated_at

    async def test_sets_provider_response_id_when_given(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        params = terminal_params(turn, TurnState.COMPLETED, provider_response_id="resp_1")
        async with db.store.connection() as runner:
            assert await db.repo.cas_update_state(runner, ALLOW, params) == 1
        after = await db.reload(turn)
        assert after.provider_response_id == "resp_1"
        assert after.assistant_message_id == params.assistant_message_id

    async def test_keeps_message_id_when_not_given(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        message_id = uuid4()
        async with db.store.connection() as runner:
            await db.repo.set_assistant_message_id(runner, ALLOW, turn.id, message_id)
            params = terminal_params(turn, TurnState.CANCELLED)
            assert await db.repo.cas_update_state(runner, ALLOW, params) == 1
        assert (await db.reload(turn)).assistant_message_id == message_id

    async def test_applies_to_a_deleted_running_turn(
        self, turnstore_backend: BackendHarness
    ) -> None:
        """The CAS predicate is ``state = 'running'`` (rules.terminal_cas_applies), so a
        turn deleted mid-stream can still be finalized and settled."""
        db = Backend(turnstore_backend)
        turn = await db.delete(await db.create())
        assert (await db.finish(turn, TurnState.CANCELLED)).state is TurnState.CANCELLED


@pytest.mark.asyncio
class TestCasUpdateCompleted:
    async def test_running_to_completed(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        params = complete_params(turn, provider_response_id="resp_42")
        async with db.store.connection() as runner:
            assert await db.repo.cas_update_completed(runner, ALLOW, params) == 1
        after = await db.reload(turn)
        assert after.state is TurnState.COMPLETED
        assert after.assistant_message_id == params.assistant_message_id
        assert after.provider_response_id == "resp_42"
        assert after.error_code is None
        assert after.completed_at is not None
        assert after.completed_at >= after.started_at
        assert after.updated_at > turn.updated_at


# --- other writes ----------------------------------------------------------------------


@pytest.mark.asyncio
class TestSetAssistantMessageId:
    @pytest.mark.parametrize(
        "state",
        [TurnState.RUNNING, TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED],
    )
    async def test_in_any_state(self, turnstore_backend: BackendHarness, state: TurnState) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        if state is not TurnState.RUNNING:
            turn = await db.finish(turn, state)
        message_id = uuid4()
        async with db.store.connection() as runner:
            await db.repo.set_assistant_message_id(runner, ALLOW, turn.id, message_id)
        after = await db.reload(turn)
        assert after.assistant_message_id == message_id
        assert after.state is state

    async def test_out_of_scope_raises(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        async with db.store.connection() as runner:
            with pytest.raises(TurnNotFoundError):
                await db.repo.set_assistant_message_id(
                    runner, AccessScope.for_tenant(uuid4()), turn.id, uuid4()
                )
        unchanged(turn)(await db.reload(turn))


@pytest.mark.asyncio
class TestSoftDelete:
    async def test_sets_deleted_at_and_replacement(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        (turn,) = await db.chat_of(1)
        replacement = uuid4()
        after = await db.delete(turn, replacement)
        assert after.deleted_at is not None
        assert after.deleted_at >= turn.started_at
        assert after.replaced_by_request_id == replacement
        assert after.state is turn.state

    async def test_without_replacement(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        (turn,) = await db.chat_of(1)
        after = await db.delete(turn)
        assert after.deleted_at is not None
        assert after.replaced_by_request_id is None

    async def test_is_idempotent_and_keeps_the_first_delete(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        (turn,) = await db.chat_of(1)
        first = await db.delete(turn, uuid4())
        second = await db.delete(turn, uuid4())
        assert second.deleted_at == first.deleted_at
        assert second.replaced_by_request_id == first.replaced_by_request_id

    async def test_out_of_scope_raises(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        async with db.store.connection() as runner:
            with pytest.raises(TurnNotFoundError):
                await db.repo.soft_delete(runner, AccessScope.for_tenant(uuid4()), turn.id, None)
        unchanged(turn)(await db.reload(turn))


@pytest.mark.asyncio
class TestUpdateProgressAt:
    async def test_renews_progress_while_running(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        assert await db.touch(turn) == 1
        after = await db.reload(turn)
        assert after.last_progress_at is not None
        assert turn.last_progress_at is not None
        assert after.last_progress_at > turn.last_progress_at
        assert after.state is TurnState.RUNNING


@pytest.mark.asyncio
class TestUpdatePreflightFields:
    async def test_writes_the_six_fields_while_running(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        params = preflight_params(turn)
        async with db.store.connection() as runner:
            assert await db.repo.update_preflight_fields(runner, ALLOW, params) == 1
        after = await db.reload(turn)
        assert after.reserve_tokens == params.reserve_tokens
        assert after.max_output_tokens_applied == params.max_output_tokens_applied
        assert after.reserved_credits_micro == params.reserved_credits_micro
        assert after.policy_version_applied == params.policy_version_applied
        assert after.effective_model == params.effective_model
        assert after.minimal_generation_floor_applied == params.minimal_generation_floor_applied
        assert after.state is TurnState.RUNNING


@pytest.mark.asyncio
class TestIncrementToolCalls:
    @pytest.mark.parametrize("tool", list(ToolCallType))
    async def test_bumps_only_the_tools_counter(
        self, turnstore_backend: BackendHarness, tool: ToolCallType
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        async with db.store.connection() as runner:
            await db.repo.increment_tool_calls(runner, ALLOW, turn.id, tool)
            await db.repo.increment_tool_calls(runner, ALLOW, turn.id, tool)
        after = await db.reload(turn)
        counters = {t: getattr(after, t.column) for t in ToolCallType}
        assert counters == {t: (2 if t is tool else 0) for t in ToolCallType}

    async def test_deleted_running_turn_is_not_counted(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.delete(await db.create())
        async with db.store.connection() as runner:
            await db.repo.increment_tool_calls(runner, ALLOW, turn.id, ToolCallType.FILE_SEARCH)
        unchanged(turn)(await db.reload(turn))


# --- the predicates every write shares -------------------------------------------------


@dataclass(frozen=True)
class WriteCase:
    """One write method, called on turn ``t`` with ``scope``.

    ``running_only``: it must not touch a terminal turn. ``noop``: what it returns when it
    does not apply. ``raises_when_absent``: a missing (or out-of-scope) turn raises
    ``TurnNotFoundError`` instead of returning ``noop``.
    """

    name: str
    call: Callable[[TurnRepository[Any], Any, AccessScope, Turn], Awaitable[int | None]]
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


@pytest.mark.asyncio
class TestWritePredicates:
    """``WHERE id = ?`` and ``AND state = 'running'`` of every write, one table for all."""

    @pytest.mark.parametrize("state", [TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED])
    @pytest.mark.parametrize("write", RUNNING_ONLY_WRITES, ids=str)
    async def test_terminal_turn_is_left_alone(
        self, turnstore_backend: BackendHarness, write: WriteCase, state: TurnState
    ) -> None:
        db = Backend(turnstore_backend)
        done = await db.finish(await db.create(), state)
        await turnstore_backend.advance_time(STALE_SECS)  # stale too: only the state guards it
        done = await db.reload(done)
        async with db.store.connection() as runner:
            assert await write.call(db.repo, runner, ALLOW, done) == write.noop
        unchanged(done)(await db.reload(done))

    @pytest.mark.parametrize("write", WRITES, ids=str)
    async def test_only_the_named_turn(
        self, turnstore_backend: BackendHarness, write: WriteCase
    ) -> None:
        db = Backend(turnstore_backend)
        target, bystander = await db.create(), await db.create(tenant_id=uuid4())
        await turnstore_backend.advance_time(STALE_SECS)
        target, bystander = await db.reload(target), await db.reload(bystander)
        async with db.store.connection() as runner:
            result = await write.call(db.repo, runner, ALLOW, target)
        assert result == (None if write.noop is None else 1)
        assert await db.reload(target) != target, f"{write.name} did not write"
        unchanged(bystander)(await db.reload(bystander))

    @pytest.mark.parametrize("write", WRITES, ids=str)
    async def test_missing_turn(self, turnstore_backend: BackendHarness, write: WriteCase) -> None:
        db = Backend(turnstore_backend)
        existing = await db.create()
        ghost = existing.model_copy(update={"id": uuid4()})
        async with db.store.connection() as runner:
            if write.raises_when_absent:
                with pytest.raises(TurnNotFoundError) as info:
                    await write.call(db.repo, runner, ALLOW, ghost)
                assert info.value.turn_id == ghost.id
            else:
                assert await write.call(db.repo, runner, ALLOW, ghost) == write.noop
        unchanged(existing)(await db.reload(existing))


# --- orphans ---------------------------------------------------------------------------


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


# --- find_latest_for_update ------------------------------------------------------------


@pytest.mark.asyncio
class TestFindLatestForUpdate:
    async def test_same_answer_as_find_latest_turn(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        low, high = ordered_ids()
        chat_id, tenant_id = uuid4(), uuid4()
        await db.finish(await db.create(turn_id=high, chat_id=chat_id, tenant_id=tenant_id))
        second = await db.create(turn_id=low, chat_id=chat_id, tenant_id=tenant_id)
        assert await db.latest_for_update(chat_id) == second
        await db.delete(second)
        assert await db.latest_for_update(chat_id) == await db.latest(chat_id)
        assert await db.latest_for_update(uuid4()) is None

    @pytest.mark.parametrize(
        "larger_id_first", [True, False], ids=["larger-first", "larger-second"]
    )
    async def test_same_started_at_the_larger_id_is_latest(
        self, turnstore_backend: BackendHarness, larger_id_first: bool
    ) -> None:
        db = Backend(turnstore_backend)
        first, second = await db.chat_started_at_once(larger_id_first)
        larger = max(first, second, key=lambda t: t.id)
        assert await db.latest_for_update(first.chat_id) == larger

    async def test_excludes_deleted_and_other_chats(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        first, second = await db.chat_of(2)
        await db.create(tenant_id=first.tenant_id)  # newer, another chat
        await db.delete(second)
        assert await db.latest_for_update(first.chat_id) == first
        await db.delete(first)
        assert await db.latest_for_update(first.chat_id) is None

    async def test_the_latest_in_scope(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        mine = await db.finish(await db.create())
        await db.create(chat_id=mine.chat_id)  # another tenant's, newer
        scope = AccessScope.for_tenant(mine.tenant_id)
        assert await db.latest_for_update(mine.chat_id, scope) == mine
        assert await db.latest_for_update(mine.chat_id, AccessScope.deny_all()) is None

    async def test_second_locker_waits_and_then_sees_the_true_latest(
        self, turnstore_backend: BackendHarness
    ) -> None:
        """Spec section 7: the first transaction replaces the latest turn X by Y; a locker
        that waited on it must get Y, not X and not the older W."""
        db = Backend(turnstore_backend)
        older, latest = await db.chat_of(2)
        replacement = make_params(chat_id=latest.chat_id, tenant_id=latest.tenant_id)
        first_locked, release_first = asyncio.Event(), asyncio.Event()
        events: list[str] = []

        async def first() -> Turn:
            async with db.store.transaction() as runner:
                seen = await db.repo.find_latest_for_update(runner, ALLOW, latest.chat_id)
                assert seen == latest
                first_locked.set()
                await bounded(release_first.wait())
                await db.repo.soft_delete(runner, ALLOW, latest.id, replacement.request_id)
                created = await db.repo.create_turn(runner, ALLOW, replacement)
                events.append("first commits")
            return created

        async def second() -> Turn | None:
            async with db.store.transaction() as runner:
                seen = await db.repo.find_latest_for_update(runner, ALLOW, latest.chat_id)
                events.append("second locked")
                return seen

        first_task = asyncio.create_task(first())
        await bounded(first_locked.wait())
        second_task = asyncio.create_task(second())
        done, _ = await asyncio.wait({second_task}, timeout=BLOCK_PROBE_SECS)
        assert not done, "a second locker of the chat got through while the first held it"
        release_first.set()
        created = await bounded(first_task)
        seen = await bounded(second_task)
        assert events == ["first commits", "second locked"]
        assert seen is not None
        assert seen.id == created.id, (
            f"waiting locker got {seen.id}; true latest is {created.id} "
            f"(replaced {latest.id}, older {older.id})"
        )

    async def test_an_empty_chat_is_locked_too(self, turnstore_backend: BackendHarness) -> None:
        """The lock is on the chat, not only on its latest row: two transactions that both
        find a chat empty and both mean to start its first turn are serialized."""
        db = Backend(turnstore_backend)
        params = make_params()
        first_locked, release_first = asyncio.Event(), asyncio.Event()

        async def first() -> Turn:
            async with db.store.transaction() as runner:
                assert await db.repo.find_latest_for_update(runner, ALLOW, params.chat_id) is None
                first_locked.set()
                await bounded(release_first.wait())
                return await db.repo.create_turn(runner, ALLOW, params)

        first_task = asyncio.create_task(first())
        await bounded(first_locked.wait())
        second_task = asyncio.create_task(db.latest_for_update(params.chat_id))
        done, _ = await asyncio.wait({second_task}, timeout=BLOCK_PROBE_SECS)
        assert not done, "a second locker of an empty chat got through while the first held it"
        release_first.set()
        created = await bounded(first_task)
        assert await bounded(second_task) == created

    async def test_rollback_releases_the_lock(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        (turn,) = await db.chat_of(1)
        first_locked, release_first = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            async with db.store.transaction() as runner:
                await db.repo.find_latest_for_update(runner, ALLOW, turn.chat_id)
                await db.repo.soft_delete(runner, ALLOW, turn.id, None)
                first_locked.set()
                await bounded(release_first.wait())
                raise Planted

        first_task = asyncio.create_task(first())
        await bounded(first_locked.wait())
        second_task = asyncio.create_task(db.latest_for_update(turn.chat_id))
        done, _ = await asyncio.wait({second_task}, timeout=BLOCK_PROBE_SECS)
        assert not done, "a second locker of the chat got through while the first held it"
        release_first.set()
        with pytest.raises(Planted):
            await bounded(first_task)
        assert await bounded(second_task) == turn

    async def test_other_chats_and_plain_readers_are_not_blocked(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        (locked,) = await db.chat_of(1)
        (other,) = await db.chat_of(1)
        first_locked, release_first = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            async with db.store.transaction() as runner:
                await db.repo.find_latest_for_update(runner, ALLOW, locked.chat_id)
                first_locked.set()
                await bounded(release_first.wait())

        first_task = asyncio.create_task(first())
        try:
            await bounded(first_locked.wait())
            assert await bounded(db.latest_for_update(other.chat_id)) == other
            assert await bounded(db.latest(locked.chat_id)) == locked
            assert not first_task.done()
        finally:
            release_first.set()
            await bounded(first_task)


# --- scope isolation -------------------------------------------------------------------


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

#: Scopes that must not see or change the target turn ``t``.
DENYING_SCOPES = [
    ScopeCase("deny_all", lambda t, o: AccessScope.deny_all()),
    ScopeCase("other_tenant", lambda t, o: AccessScope.for_tenant(o.tenant_id)),
    ScopeCase("other_tenants", lambda t, o: AccessScope.for_tenants([o.tenant_id, uuid4()])),
    ScopeCase("other_resource", lambda t, o: AccessScope.for_resource(o.id)),
    ScopeCase("other_resources", lambda t, o: AccessScope.for_resources([o.id, uuid4()])),
    ScopeCase("empty_tenants", lambda t, o: AccessScope.for_tenants([])),
    ScopeCase(
        "unknown_property",
        lambda t, o: _scope(_constraint(ScopeFilter.eq("chat_id", t.chat_id))),
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

#: Scopes that must see and change the target turn ``t``.
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


@pytest.mark.asyncio
class TestScopeIsolation:
    @pytest.mark.parametrize("case", DENYING_SCOPES, ids=str)
    async def test_foreign_scope_sees_nothing_and_changes_nothing(
        self, turnstore_backend: BackendHarness, case: ScopeCase
    ) -> None:
        db = Backend(turnstore_backend)
        other = await db.create()
        target = await db.create()
        scope = case.build(target, other)
        repo = db.repo
        async with db.store.transaction() as runner:
            chat, turn_id = target.chat_id, target.id
            assert (
                await repo.find_by_chat_and_request_id(runner, scope, chat, target.request_id)
                is None
            )
            assert await repo.find_running_by_chat_id(runner, scope, chat) is None
            assert await repo.find_latest_turn(runner, scope, chat) is None
            assert await repo.find_latest_for_update(runner, scope, chat) is None
            assert await repo.update_progress_at(runner, scope, turn_id) == 0
            assert await repo.update_preflight_fields(runner, scope, preflight_params(target)) == 0
            await repo.increment_tool_calls(runner, scope, turn_id, ToolCallType.WEB_SEARCH)
            with pytest.raises(TurnNotFoundError):
                await repo.set_assistant_message_id(runner, scope, turn_id, uuid4())
            with pytest.raises(TurnNotFoundError):
                await repo.soft_delete(runner, scope, turn_id, uuid4())
            assert await repo.cas_update_completed(runner, scope, complete_params(target)) == 0
            for state in (TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED):
                cas = terminal_params(target, state)
                assert await repo.cas_update_state(runner, scope, cas) == 0
            with pytest.raises(ScopeDeniedError):
                await repo.create_turn(
                    runner, scope, make_params(chat_id=uuid4(), tenant_id=target.tenant_id)
                )
        unchanged(target)(await db.reload(target))
        unchanged(other)(await db.reload(other))

    @pytest.mark.parametrize("case", PERMITTING_SCOPES, ids=str)
    async def test_permitting_scope_reads_and_changes(
        self, turnstore_backend: BackendHarness, case: ScopeCase
    ) -> None:
        db = Backend(turnstore_backend)
        other = await db.create()
        target = await db.create()
        scope = case.build(target, other)
        repo = db.repo
        message_id = uuid4()
        async with db.store.transaction() as runner:
            chat, turn_id = target.chat_id, target.id
            assert (
                await repo.find_by_chat_and_request_id(runner, scope, chat, target.request_id)
                == target
            )
            assert await repo.find_running_by_chat_id(runner, scope, chat) == target
            assert await repo.find_latest_turn(runner, scope, chat) == target
            assert await repo.find_latest_for_update(runner, scope, chat) == target
            assert await repo.update_progress_at(runner, scope, turn_id) == 1
            assert await repo.update_preflight_fields(runner, scope, preflight_params(target)) == 1
            await repo.increment_tool_calls(runner, scope, turn_id, ToolCallType.WEB_SEARCH)
            await repo.set_assistant_message_id(runner, scope, turn_id, message_id)
            assert (
                await repo.cas_update_state(
                    runner, scope, terminal_params(target, TurnState.FAILED)
                )
                == 1
            )
            await repo.soft_delete(runner, scope, turn_id, None)
        after = await db.reload(target)
        assert after.web_search_completed_count == 1
        assert after.assistant_message_id == message_id
        assert after.reserve_tokens == preflight_params(target).reserve_tokens
        assert after.state is TurnState.FAILED
        assert after.deleted_at is not None
        unchanged(other)(await db.reload(other))

    async def test_cas_update_completed_in_scope(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        async with db.store.connection() as runner:
            params = complete_params(turn)
            scope = AccessScope.for_tenant(turn.tenant_id)
            assert await db.repo.cas_update_completed(runner, scope, params) == 1

    async def test_orphan_methods_are_unscoped(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        a, b = await db.create(), await db.create()
        await turnstore_backend.advance_time(STALE_SECS)
        assert set(await db.orphans()) == {a.id, b.id}
        async with db.store.connection() as runner:
            assert await db.repo.cas_finalize_orphan(runner, a.id, TIMEOUT_SECS) == 1
            assert await db.repo.cas_finalize_orphan(runner, b.id, TIMEOUT_SECS) == 1


# --- timestamps ------------------------------------------------------------------------


@pytest.mark.asyncio
class TestTimestamps:
    async def test_set_time_is_read_exactly_even_backwards(
        self, turnstore_backend: BackendHarness
    ) -> None:
        """The harness contract the boundary and tie-break tests rely on."""
        db = Backend(turnstore_backend)
        with pytest.raises(InvalidParameterError):
            await turnstore_backend.set_time(datetime(2031, 5, 17))  # naive: which zone?
        await turnstore_backend.set_time(SET_INSTANT)
        turn = await db.create()
        assert turn.started_at == turn.last_progress_at == SET_INSTANT
        assert await db.touch(turn) == 1
        assert (await db.reload(turn)).last_progress_at == SET_INSTANT + TICK
        earlier = SET_INSTANT - timedelta(days=1)
        await turnstore_backend.set_time(earlier)
        before = await db.create()
        assert before.started_at == earlier
        await turnstore_backend.advance_time(STALE_SECS)
        after = await db.create()
        before = await db.reload(before)
        assert after.started_at - before.started_at >= timedelta(seconds=STALE_SECS)

    async def test_insert_stamps_one_instant(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        assert turn.started_at == turn.last_progress_at == turn.updated_at
        assert turn.started_at.tzinfo is not None
        assert turn.completed_at is None

    async def test_later_calls_are_strictly_later(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        first = await db.create()
        second = await db.create()
        assert second.started_at > first.started_at
        assert await db.touch(first) == 1
        touched = await db.reload(first)
        assert touched.last_progress_at is not None
        assert touched.last_progress_at > second.started_at
        done = await db.finish(touched)
        assert done.completed_at is not None
        assert done.completed_at > touched.last_progress_at
        assert done.updated_at >= done.completed_at

    @pytest.mark.parametrize(
        "finalize", ["cas_update_completed", "cas_update_state", "cas_finalize_orphan"]
    )
    async def test_created_and_completed_in_one_transaction(
        self, turnstore_backend: BackendHarness, finalize: str
    ) -> None:
        """With a clock read per transaction instead of per statement, a turn finalized in
        the transaction that created it would show ``completed_at < started_at``."""
        db = Backend(turnstore_backend)
        params = make_params()
        async with db.store.transaction() as runner:
            turn = await db.repo.create_turn(runner, ALLOW, params)
            if finalize == "cas_update_completed":
                won = await db.repo.cas_update_completed(runner, ALLOW, complete_params(turn))
            elif finalize == "cas_update_state":
                cas = terminal_params(turn, TurnState.CANCELLED)
                won = await db.repo.cas_update_state(runner, ALLOW, cas)
            else:
                # Timeout 0: stale at once (``last_progress_at <= now``), no time has to pass.
                won = await db.repo.cas_finalize_orphan(runner, turn.id, 0)
            assert won == 1
        done = await db.reload(turn)
        assert done.completed_at is not None
        assert done.completed_at >= done.started_at
        assert done.updated_at >= done.started_at

    async def test_later_calls_in_one_transaction_are_strictly_later(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        params = make_params()
        async with db.store.transaction() as runner:
            turn = await db.repo.create_turn(runner, ALLOW, params)
            assert await db.repo.update_progress_at(runner, ALLOW, turn.id) == 1
            touched = await db.repo.find_running_by_chat_id(runner, ALLOW, turn.chat_id)
            assert touched is not None
            assert touched.last_progress_at is not None
            assert touched.last_progress_at > turn.started_at
            assert touched.updated_at > turn.updated_at
            await db.repo.soft_delete(runner, ALLOW, turn.id, None)
        deleted = await db.reload(turn)
        assert deleted.deleted_at is not None
        assert touched.last_progress_at < deleted.deleted_at

    async def test_turns_created_later_in_one_transaction_sort_later(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        low, high = ordered_ids()
        first_params = make_params(turn_id=high)
        second_params = make_params(
            turn_id=low, chat_id=first_params.chat_id, tenant_id=first_params.tenant_id
        )
        async with db.store.transaction() as runner:
            first = await db.repo.create_turn(runner, ALLOW, first_params)
            assert await db.repo.cas_update_completed(runner, ALLOW, complete_params(first)) == 1
            second = await db.repo.create_turn(runner, ALLOW, second_params)
        assert second.started_at > first.started_at
        assert await db.latest(first.chat_id) == second

    async def test_running_has_no_completed_at_terminal_has_one(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        assert turn.completed_at is None
        for state in (TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED):
            done = await db.finish(await db.create(), state)
            assert done.completed_at is not None


# --- transactions ----------------------------------------------------------------------


async def _trigger_duplicate_request(db: Backend, runner: Any, existing: Turn) -> None:
    params = make_params(chat_id=existing.chat_id, request_id=existing.request_id)
    with pytest.raises(DuplicateRequestError):
        await db.repo.create_turn(runner, ALLOW, params)


async def _trigger_generation_in_progress(db: Backend, runner: Any, existing: Turn) -> None:
    params = make_params(chat_id=existing.chat_id, tenant_id=existing.tenant_id)
    with pytest.raises(GenerationInProgressError):
        await db.repo.create_turn(runner, ALLOW, params)


async def _trigger_duplicate_turn_id(db: Backend, runner: Any, existing: Turn) -> None:
    with pytest.raises(DuplicateTurnIdError):
        await db.repo.create_turn(runner, ALLOW, make_params(turn_id=existing.id))


async def _trigger_scope_denied(db: Backend, runner: Any, existing: Turn) -> None:
    with pytest.raises(ScopeDeniedError):
        await db.repo.create_turn(runner, AccessScope.deny_all(), make_params())


async def _trigger_not_found_on_set_message(db: Backend, runner: Any, existing: Turn) -> None:
    with pytest.raises(TurnNotFoundError):
        await db.repo.set_assistant_message_id(runner, ALLOW, uuid4(), uuid4())


async def _trigger_not_found_on_delete(db: Backend, runner: Any, existing: Turn) -> None:
    with pytest.raises(TurnNotFoundError):
        await db.repo.soft_delete(runner, AccessScope.deny_all(), existing.id, None)


TYPED_ERROR_TRIGGERS = {
    "duplicate_request": _trigger_duplicate_request,
    "generation_in_progress": _trigger_generation_in_progress,
    "duplicate_turn_id": _trigger_duplicate_turn_id,
    "scope_denied": _trigger_scope_denied,
    "not_found_set_message": _trigger_not_found_on_set_message,
    "not_found_soft_delete": _trigger_not_found_on_delete,
}


@pytest.mark.asyncio
class TestTransactions:
    async def test_rollback_leaves_no_trace(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        kept = await db.create()
        params = make_params(chat_id=kept.chat_id, tenant_id=kept.tenant_id)

        async def write_then_fail() -> None:
            async with db.store.transaction() as runner:
                assert await db.repo.cas_update_completed(runner, ALLOW, complete_params(kept)) == 1
                await db.repo.create_turn(runner, ALLOW, params)
                await db.repo.soft_delete(runner, ALLOW, kept.id, params.request_id)
                raise Planted

        with pytest.raises(Planted):
            await write_then_fail()
        unchanged(kept)(await db.reload(kept))
        async with db.store.connection() as runner:
            assert (
                await db.repo.find_by_chat_and_request_id(
                    runner, ALLOW, params.chat_id, params.request_id
                )
                is None
            )
            # The rolled-back insert left neither its id nor its request id behind.
            await db.repo.cas_update_state(runner, ALLOW, terminal_params(kept, TurnState.FAILED))
            assert (await db.repo.create_turn(runner, ALLOW, params)).id == params.id

    async def test_own_writes_are_visible_inside(self, turnstore_backend: BackendHarness) -> None:
        db = Backend(turnstore_backend)
        params = make_params()
        async with db.store.transaction() as runner:
            turn = await db.repo.create_turn(runner, ALLOW, params)
            find = db.repo.find_by_chat_and_request_id
            assert await find(runner, ALLOW, turn.chat_id, turn.request_id) == turn
            assert await db.repo.find_running_by_chat_id(runner, ALLOW, turn.chat_id) == turn
            assert await db.repo.cas_update_completed(runner, ALLOW, complete_params(turn)) == 1
            done = await find(runner, ALLOW, turn.chat_id, turn.request_id)
            assert done is not None
            assert done.state is TurnState.COMPLETED
            assert await db.repo.find_running_by_chat_id(runner, ALLOW, turn.chat_id) is None
            assert await db.repo.find_latest_turn(runner, ALLOW, turn.chat_id) == done

    async def test_uncommitted_writes_are_invisible_to_others(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        existing = await db.create()
        params = make_params()
        written, release = asyncio.Event(), asyncio.Event()

        async def writer() -> None:
            async with db.store.transaction() as runner:
                await db.repo.create_turn(runner, ALLOW, params)
                await db.repo.cas_update_completed(runner, ALLOW, complete_params(existing))
                written.set()
                await bounded(release.wait())

        task = asyncio.create_task(writer())
        try:
            await bounded(written.wait())
            async with db.store.connection() as runner:
                find = db.repo.find_by_chat_and_request_id
                assert await bounded(find(runner, ALLOW, params.chat_id, params.request_id)) is None
                running = db.repo.find_running_by_chat_id(runner, ALLOW, existing.chat_id)
                assert await bounded(running) == existing
        finally:
            release.set()
            await bounded(task)
        assert (await db.reload(existing)).state is TurnState.COMPLETED
        async with db.store.connection() as runner:
            found = await db.repo.find_by_chat_and_request_id(
                runner, ALLOW, params.chat_id, params.request_id
            )
        assert found is not None

    @pytest.mark.parametrize("trigger", TYPED_ERROR_TRIGGERS.values(), ids=TYPED_ERROR_TRIGGERS)
    async def test_typed_error_leaves_the_transaction_usable(
        self,
        turnstore_backend: BackendHarness,
        trigger: Callable[[Backend, Any, Turn], Awaitable[None]],
    ) -> None:
        db = Backend(turnstore_backend)
        params = make_params()
        later = make_params()
        async with db.store.transaction() as runner:
            turn = await db.repo.create_turn(runner, ALLOW, params)
            await trigger(db, runner, turn)
            assert await db.repo.update_progress_at(runner, ALLOW, turn.id) == 1
            await db.repo.create_turn(runner, ALLOW, later)
        # Committed: both the write before and the write after the error are there.
        assert (await db.reload(turn)).id == params.id
        async with db.store.connection() as runner:
            found = await db.repo.find_by_chat_and_request_id(
                runner, ALLOW, later.chat_id, later.request_id
            )
        assert found is not None

    async def test_typed_error_in_autocommit_keeps_the_connection_usable(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        async with db.store.connection() as runner:
            turn = await db.repo.create_turn(runner, ALLOW, make_params())
            for trigger in TYPED_ERROR_TRIGGERS.values():
                await trigger(db, runner, turn)
            assert await db.repo.update_progress_at(runner, ALLOW, turn.id) == 1


# --- concurrency -----------------------------------------------------------------------


async def _outcomes(
    calls: Iterable[Callable[[], Awaitable[T]]],
) -> list[T | BaseException]:
    results = await bounded(asyncio.gather(*(call() for call in calls), return_exceptions=True))
    unexpected = [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, TurnStoreError)
    ]
    if unexpected:
        raise unexpected[0]
    return results


@pytest.mark.asyncio
class TestConcurrency:
    async def test_concurrent_finalizers_exactly_one_wins(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        gate = Gate(CONCURRENCY)
        states = [TurnState.COMPLETED, TurnState.FAILED, TurnState.CANCELLED]

        def finalizer(i: int) -> Callable[[], Awaitable[int]]:
            async def run() -> int:
                async with db.store.transaction() as runner:
                    await gate.arrive()
                    if i % 4 == 3:
                        return await db.repo.cas_update_completed(
                            runner, ALLOW, complete_params(turn)
                        )
                    params = terminal_params(turn, states[i % 3])
                    return await db.repo.cas_update_state(runner, ALLOW, params)

            return run

        results = await _outcomes(finalizer(i) for i in range(CONCURRENCY))
        assert (results.count(1), results.count(0)) == (1, CONCURRENCY - 1), results
        assert (await db.reload(turn)).state.is_terminal

    async def test_concurrent_orphan_finalizers_exactly_one_wins(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        turn = await db.create()
        await turnstore_backend.advance_time(STALE_SECS)
        gate = Gate(CONCURRENCY)

        async def finalize() -> int:
            async with db.store.transaction() as runner:
                await gate.arrive()
                return await db.repo.cas_finalize_orphan(runner, turn.id, TIMEOUT_SECS)

        results = await _outcomes([finalize] * CONCURRENCY)
        assert (results.count(1), results.count(0)) == (1, CONCURRENCY - 1), results
        assert (await db.reload(turn)).error_code == ORPHAN_ERROR_CODE

    async def test_concurrent_starts_in_one_chat_exactly_one_runs(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        chat_id, tenant_id = uuid4(), uuid4()
        gate = Gate(CONCURRENCY)

        def start(params: CreateTurnParams) -> Callable[[], Awaitable[Turn]]:
            async def run() -> Turn:
                async with db.store.transaction() as runner:
                    await gate.arrive()
                    return await db.repo.create_turn(runner, ALLOW, params)

            return run

        results = await _outcomes(
            start(make_params(chat_id=chat_id, tenant_id=tenant_id)) for _ in range(CONCURRENCY)
        )
        winners = [r for r in results if isinstance(r, Turn)]
        losers = [r for r in results if not isinstance(r, Turn)]
        assert len(winners) == 1
        assert len(losers) == CONCURRENCY - 1
        for loser in losers:
            assert isinstance(loser, GenerationInProgressError), repr(loser)
            assert loser.running_turn_id == winners[0].id
        async with db.store.connection() as runner:
            assert await db.repo.find_running_by_chat_id(runner, ALLOW, chat_id) == winners[0]

    async def test_concurrent_starts_of_one_request_exactly_one_inserts(
        self, turnstore_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_backend)
        chat_id, tenant_id, request_id = uuid4(), uuid4(), uuid4()
        gate = Gate(CONCURRENCY)

        def start(params: CreateTurnParams) -> Callable[[], Awaitable[Turn]]:
            async def run() -> Turn:
                async with db.store.transaction() as runner:
                    await gate.arrive()
                    return await db.repo.create_turn(runner, ALLOW, params)

            return run

        results = await _outcomes(
            start(make_params(chat_id=chat_id, tenant_id=tenant_id, request_id=request_id))
            for _ in range(CONCURRENCY)
        )
        winners = [r for r in results if isinstance(r, Turn)]
        losers = [r for r in results if not isinstance(r, Turn)]
        assert len(winners) == 1
        for loser in losers:
            assert isinstance(loser, DuplicateRequestError), repr(loser)
            assert loser.existing_turn_id == winners[0].id

    async def test_concurrent_keepalives_and_finalizer(
        self, turnstore_backend: BackendHarness
    ) -> None:
        """Keep-alives racing a finalizer never resurrect or break the terminal row."""
        db = Backend(turnstore_backend)
        turn = await db.create()
        gate = Gate(CONCURRENCY)

        def call(i: int) -> Callable[[], Awaitable[int]]:
            async def run() -> int:
                async with db.store.transaction() as runner:
                    await gate.arrive()
                    if i == 0:
                        return await db.repo.cas_update_completed(
                            runner, ALLOW, complete_params(turn)
                        )
                    return await db.repo.update_progress_at(runner, ALLOW, turn.id)

            return run

        results = await _outcomes(call(i) for i in range(CONCURRENCY))
        assert results[0] == 1
        after = await db.reload(turn)
        assert after.state is TurnState.COMPLETED
        assert after.completed_at is not None
