"""The lifecycle rules (docs/design.md, Starting a turn to Orphans) on both backends: start, replay
and rejection, keep-alive coalescing, finalization with hooks, and retry/edit/delete of the last
turn, including the races each rule exists for."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pydantic
import pytest

from lifecycle_support import Chat, HookRecorder, RepositoryTap, tapped, wait_until_blocked
from turnstore.errors import (
    DuplicateTurnIdError,
    ForbiddenError,
    GenerationInProgressError,
    InvalidTurnStateError,
    NotLatestTurnError,
    ScopeDeniedError,
    TurnNotFoundError,
)
from turnstore.ids import new_uuid7
from turnstore.lifecycle import (
    FinalizeOutcome,
    MutationKind,
    MutationResult,
    RejectReason,
    StartKind,
    TurnLifecycle,
)
from turnstore.model import Turn, TurnState
from turnstore.scope import AccessScope
from turnstore.settings import KeepAliveSettings, WatchdogSettings
from turnstore.testing.backends import BackendHarness


def lifecycle_of(backend: BackendHarness) -> TurnLifecycle[Any]:
    return TurnLifecycle(backend.store)


@pytest.fixture
def lc(turnstore_backend: BackendHarness) -> TurnLifecycle[Any]:
    return lifecycle_of(turnstore_backend)


@pytest.fixture
def chat() -> Chat:
    return Chat()


async def reload(backend: BackendHarness, turn: Turn) -> Turn:
    async with backend.store.connection() as conn:
        row = await backend.store.turns.find_by_chat_and_request_id(
            conn, AccessScope.allow_all(), turn.tenant_id, turn.chat_id, turn.request_id
        )
    assert row is not None
    return row


async def running_of(backend: BackendHarness, chat: Chat) -> Turn | None:
    async with backend.store.connection() as conn:
        return await backend.store.turns.find_running_by_chat_id(
            conn, chat.scope, chat.tenant_id, chat.chat_id
        )


async def latest_of(backend: BackendHarness, chat: Chat) -> Turn | None:
    async with backend.store.connection() as conn:
        return await backend.store.turns.find_latest_turn(
            conn, chat.scope, chat.tenant_id, chat.chat_id
        )


async def started(lc: TurnLifecycle[Any], chat: Chat, request_id: UUID | None = None) -> Turn:
    outcome = await lc.begin_turn(chat.scope, chat.params(request_id))
    assert outcome.kind is StartKind.STARTED
    assert outcome.turn is not None
    return outcome.turn


async def completed(lc: TurnLifecycle[Any], chat: Chat) -> Turn:
    turn = await started(lc, chat)
    assert (await lc.complete_turn(chat.scope, turn, uuid.uuid4())).won
    return turn


# --------------------------------------------------------------------------- start


async def test_begin_starts_a_running_turn(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    params = chat.params()
    outcome = await lc.begin_turn(chat.scope, params)
    assert outcome.started
    assert not outcome.replayed
    assert not outcome.rejected
    assert outcome.reason is None
    assert outcome.turn is not None
    assert outcome.turn.id == params.id
    assert outcome.turn.state is TurnState.RUNNING
    assert await running_of(turnstore_backend, chat) == outcome.turn


async def test_begin_common_path_is_one_repository_call(
    turnstore_backend: BackendHarness,
) -> None:
    store, tap = tapped(turnstore_backend)
    chat = Chat()
    outcome = await TurnLifecycle(store).begin_turn(chat.scope, chat.params())
    assert outcome.started
    assert dict(tap.calls) == {"create_turn": 1}


async def test_completed_request_replays_without_writing(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    turn = await completed(lc, chat)
    before = await reload(turnstore_backend, turn)
    outcome = await lc.begin_turn(chat.scope, chat.params(turn.request_id))
    assert outcome.kind is StartKind.REPLAY
    assert outcome.replayed
    assert outcome.turn == before
    assert await reload(turnstore_backend, turn) == before
    assert await running_of(turnstore_backend, chat) is None


async def test_completed_request_replays_while_another_turn_runs(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    done = await completed(lc, chat)
    other = await started(lc, chat)
    outcome = await lc.begin_turn(chat.scope, chat.params(done.request_id))
    assert outcome.kind is StartKind.REPLAY
    assert outcome.turn is not None
    assert outcome.turn.id == done.id
    assert await running_of(turnstore_backend, chat) == other


@pytest.mark.parametrize("how", ["failed", "cancelled", "deleted"])
async def test_taken_request_id_is_a_conflict(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat, how: str
) -> None:
    turn = await started(lc, chat)
    if how == "failed":
        await lc.fail_turn(chat.scope, turn, "provider_error")
    elif how == "cancelled":
        await lc.cancel_turn(chat.scope, turn)
    elif how == "deleted":
        await lc.complete_turn(chat.scope, turn, uuid.uuid4())
        await lc.delete_turn(
            chat.scope, chat.tenant_id, chat.chat_id, turn.request_id, chat.user_id
        )
    outcome = await lc.begin_turn(chat.scope, chat.params(turn.request_id))
    assert outcome.kind is StartKind.REJECTED
    assert outcome.reason is RejectReason.REQUEST_ID_CONFLICT
    assert outcome.turn is not None
    assert outcome.turn.id == turn.id
    assert outcome.running_turn_id is None


async def test_another_running_turn_rejects_with_its_id(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    running = await started(lc, chat)
    params = chat.params()
    outcome = await lc.begin_turn(chat.scope, params)
    assert outcome.kind is StartKind.REJECTED
    assert outcome.reason is RejectReason.GENERATION_IN_PROGRESS
    assert outcome.running_turn_id == running.id
    assert outcome.turn == running
    async with turnstore_backend.store.connection() as conn:
        assert (
            await turnstore_backend.store.turns.find_by_chat_and_request_id(
                conn, chat.scope, chat.tenant_id, chat.chat_id, params.request_id
            )
            is None
        )


async def test_request_id_taken_outside_the_scope_is_a_conflict_that_shows_nothing(
    turnstore_backend: BackendHarness,
) -> None:
    lc = lifecycle_of(turnstore_backend)
    owner = Chat()
    turn = await started(lc, owner)
    params = owner.params(turn.request_id)
    # A scope that lets the new row in but does not see the turn holding the key.
    narrow = AccessScope.for_resource(params.id)
    outcome = await lc.begin_turn(narrow, params)
    assert outcome.reason is RejectReason.REQUEST_ID_CONFLICT
    assert outcome.turn is None


async def test_another_tenant_with_the_same_chat_and_request_ids_starts_its_own_turn(
    turnstore_backend: BackendHarness,
) -> None:
    """A chat is (tenant_id, chat_id): another tenant's chat with the same id shares
    neither idempotency keys nor the running slot with it."""
    lc = lifecycle_of(turnstore_backend)
    owner = Chat()
    turn = await started(lc, owner)
    other = Chat(chat_id=owner.chat_id, user_id=owner.user_id)
    outcome = await lc.begin_turn(other.scope, other.params(turn.request_id))
    assert outcome.kind is StartKind.STARTED
    assert outcome.turn is not None
    assert outcome.turn.tenant_id == other.tenant_id
    again = await lc.begin_turn(owner.scope, owner.params())
    assert again.reason is RejectReason.GENERATION_IN_PROGRESS
    assert again.running_turn_id == turn.id
    assert again.turn == turn


async def test_running_turn_ended_between_insert_and_read_starts_after_all(
    turnstore_backend: BackendHarness,
) -> None:
    store, tap = tapped(turnstore_backend)
    lc = TurnLifecycle(store)
    chat = Chat()
    first = await started(lifecycle_of(turnstore_backend), chat)

    async def finish_first() -> None:
        await lifecycle_of(turnstore_backend).complete_turn(chat.scope, first, uuid.uuid4())

    tap.on_error["create_turn"] = finish_first
    outcome = await lc.begin_turn(chat.scope, chat.params())
    assert outcome.kind is StartKind.STARTED
    assert tap.calls["create_turn"] == 2


async def test_duplicate_turn_id_surfaces(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    turn = await completed(lc, chat)
    with pytest.raises(DuplicateTurnIdError):
        await lc.begin_turn(chat.scope, chat.params(turn_id=turn.id))


async def test_duplicate_turn_id_with_taken_request_id_replays(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    turn = await completed(lc, chat)
    outcome = await lc.begin_turn(chat.scope, chat.params(turn.request_id, turn_id=turn.id))
    assert outcome.kind is StartKind.REPLAY


async def test_begin_outside_scope_raises_and_writes_nothing(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    with pytest.raises(ScopeDeniedError):
        await lc.begin_turn(AccessScope.deny_all(), chat.params())
    assert await running_of(turnstore_backend, chat) is None


async def test_begin_in_host_transaction_rolls_back_with_it(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:

    async def begin_then_fail() -> None:
        async with turnstore_backend.store.transaction() as runner:
            outcome = await lc.begin_turn(chat.scope, chat.params(), runner=runner)
            assert outcome.started
            raise RuntimeError("host failure")

    with pytest.raises(RuntimeError, match="host failure"):
        await begin_then_fail()
    assert await running_of(turnstore_backend, chat) is None


async def test_sixteen_concurrent_starts_in_one_chat_start_exactly_one(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    outcomes = await asyncio.gather(*(lc.begin_turn(chat.scope, chat.params()) for _ in range(16)))
    winners = [o for o in outcomes if o.started]
    assert len(winners) == 1
    assert winners[0].turn is not None
    winner_id = winners[0].turn.id
    for o in outcomes:
        if not o.started:
            assert o.reason is RejectReason.GENERATION_IN_PROGRESS
            assert o.running_turn_id == winner_id
    running = await running_of(turnstore_backend, chat)
    assert running is not None
    assert running.id == winner_id


async def test_sixteen_concurrent_starts_of_one_request_start_exactly_one(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    request_id = uuid.uuid4()
    outcomes = await asyncio.gather(
        *(lc.begin_turn(chat.scope, chat.params(request_id)) for _ in range(16))
    )
    assert sum(o.started for o in outcomes) == 1
    assert all(o.reason is RejectReason.REQUEST_IN_PROGRESS for o in outcomes if not o.started)


# --------------------------------------------------------------------------- keep-alive


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval_secs": 0},
        {"interval_secs": -1},
        {"interval_secs": 101, "orphan_timeout_secs": 300},
        {"interval_secs": 10, "orphan_timeout_secs": 59},
        {"interval_secs": 10, "orphan_timeout_secs": 3601},
    ],
)
def test_keep_alive_settings_refuse_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        KeepAliveSettings(**kwargs)


def test_keep_alive_interval_may_be_a_third_of_the_timeout() -> None:
    settings = KeepAliveSettings(interval_secs=100, orphan_timeout_secs=300)
    assert settings.interval_secs * 3 == settings.orphan_timeout_secs
    assert KeepAliveSettings().heartbeat


class FakeClock:
    """A monotonic clock that moves only when told, and counts how often it is read."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0
        self.read_often = asyncio.Event()

    def __call__(self) -> float:
        self.reads += 1
        if self.reads >= 50:
            self.read_often.set()
        return self.now


#: Keep-alive written only by ``touch()``, every 10 s of a ``FakeClock``.
TOUCH_ONLY = KeepAliveSettings(interval_secs=10, heartbeat=False, batched=False)


def test_keep_alive_settings_follow_the_watchdogs_timeout() -> None:
    watchdog = WatchdogSettings(orphan_timeout_secs=60)
    settings = KeepAliveSettings.for_watchdog(watchdog)
    assert (settings.orphan_timeout_secs, settings.interval_secs) == (60, 6.0)
    assert KeepAliveSettings.for_watchdog(watchdog, interval_secs=20).interval_secs == 20
    # The default interval (30 s) is fine for the default timeout but not for this one.
    with pytest.raises(pydantic.ValidationError, match="at most a third"):
        KeepAliveSettings.for_watchdog(watchdog, interval_secs=30)


async def tapped_turn(
    backend: BackendHarness,
) -> tuple[TurnLifecycle[Any], RepositoryTap, Chat, Turn]:
    """A lifecycle over the tapped store, and a running turn started through it."""
    store, tap = tapped(backend)
    lc = TurnLifecycle(store)
    chat = Chat()
    return lc, tap, chat, await started(lc, chat)


async def test_keep_alive_coalesces_writes_per_interval(
    turnstore_backend: BackendHarness,
) -> None:
    lc, tap, chat, turn = await tapped_turn(turnstore_backend)
    clock = FakeClock()
    async with lc.keep_alive(chat.scope, turn.id, settings=TOUCH_ONLY, clock=clock) as ka:
        for _ in range(100):
            assert await ka.touch()
        assert tap.calls["update_progress_at"] == 1
        clock.now += 9.999
        for _ in range(100):
            await ka.touch()
        assert tap.calls["update_progress_at"] == 1
        clock.now += 0.001
        for _ in range(100):
            await ka.touch()
        assert tap.calls["update_progress_at"] == 2
        clock.now += 10
        await asyncio.gather(*(ka.touch() for _ in range(50)))
        assert tap.calls["update_progress_at"] == 3
        assert ka.writes == 3


async def test_keep_alive_keeps_the_turn_out_of_the_orphan_scan(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    turn = await started(lc, chat)
    clock = FakeClock()

    async def orphans() -> list[UUID]:
        async with turnstore_backend.store.connection() as conn:
            found = await turnstore_backend.store.turns.find_orphan_candidates(conn, 60, 10)
        return [t.id for t in found]

    async with lc.keep_alive(chat.scope, turn.id, settings=TOUCH_ONLY, clock=clock) as ka:
        await ka.touch()
        await turnstore_backend.advance_time(61)
        assert await orphans() == [turn.id]
        clock.now += 10
        await ka.touch()
        assert await orphans() == []


async def test_keep_alive_reports_a_turn_finalized_elsewhere(
    turnstore_backend: BackendHarness,
) -> None:
    lc, tap, chat, turn = await tapped_turn(turnstore_backend)
    clock = FakeClock()
    async with lc.keep_alive(chat.scope, turn.id, settings=TOUCH_ONLY, clock=clock) as ka:
        assert await ka.touch()
        await lc.cancel_turn(chat.scope, turn)
        clock.now += 10
        assert not await ka.touch()
        assert not ka.running
        clock.now += 10
        assert not await ka.touch()
    assert tap.calls["update_progress_at"] == 2


def keep_alive_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("turnstore-keep-alive")]


async def test_keep_alive_heartbeat_writes_without_chunks_and_stops_on_exit(
    turnstore_backend: BackendHarness,
) -> None:
    lc, tap, chat, turn = await tapped_turn(turnstore_backend)
    second_write = asyncio.Event()

    async def count() -> None:
        if tap.calls["update_progress_at"] >= 2:
            second_write.set()
        else:
            tap.after["update_progress_at"] = count

    tap.after["update_progress_at"] = count
    settings = KeepAliveSettings(interval_secs=0.01, batched=False)
    async with lc.keep_alive(chat.scope, turn.id, settings=settings):
        assert len(keep_alive_tasks()) == 1
        await asyncio.wait_for(second_write.wait(), timeout=30)
    assert keep_alive_tasks() == []


async def test_keep_alive_heartbeat_does_not_write_before_the_interval(
    turnstore_backend: BackendHarness,
) -> None:
    """The heartbeat wakes up often here (a tiny real interval) but its clock stands
    still, so after the first write every wake-up must find nothing due."""
    lc, tap, chat, turn = await tapped_turn(turnstore_backend)
    clock = FakeClock()
    settings = KeepAliveSettings(interval_secs=0.001, batched=False)
    async with lc.keep_alive(chat.scope, turn.id, settings=settings, clock=clock) as ka:
        await asyncio.wait_for(clock.read_often.wait(), timeout=30)
        assert ka.writes == 1
    assert tap.calls["update_progress_at"] == 1


async def test_keep_alive_exit_propagates_the_body_error_and_leaves_no_task(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    turn = await started(lc, chat)
    with pytest.raises(RuntimeError, match="stream broke"):
        async with lc.keep_alive(chat.scope, turn.id, settings=KeepAliveSettings()):
            raise RuntimeError("stream broke")
    assert keep_alive_tasks() == []


# --------------------------------------------------------------------------- finalize


async def test_complete_sets_message_and_reports_the_win_once(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    turn = await started(lc, chat)
    message_id = uuid.uuid4()
    first = await lc.complete_turn(chat.scope, turn, message_id, provider_response_id="resp-1")
    assert first.won
    assert first.state is TurnState.COMPLETED
    assert first.turn_id == turn.id
    second = await lc.complete_turn(chat.scope, turn, uuid.uuid4())
    assert not second.won
    row = await reload(turnstore_backend, turn)
    assert second.state is TurnState.COMPLETED
    assert second.turn == row
    assert row.state is TurnState.COMPLETED
    assert row.assistant_message_id == message_id
    assert row.provider_response_id == "resp-1"
    assert row.completed_at is not None


async def test_complete_requires_the_assistant_message_id(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    turn = await started(lc, chat)
    with pytest.raises(pydantic.ValidationError):
        await lc.complete_turn(chat.scope, turn, None)  # type: ignore[arg-type]
    assert (await reload(turnstore_backend, turn)).state is TurnState.RUNNING


async def test_fail_records_code_and_detail(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    turn = await started(lc, chat)
    assert (await lc.fail_turn(chat.scope, turn, "provider_error", "HTTP 502")).won
    row = await reload(turnstore_backend, turn)
    assert row.state is TurnState.FAILED
    assert (row.error_code, row.error_detail) == ("provider_error", "HTTP 502")
    assert not (await lc.cancel_turn(chat.scope, turn)).won


@pytest.mark.parametrize("code", ["", "x" * 65])
async def test_fail_refuses_a_bad_error_code_and_changes_nothing(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat, code: str
) -> None:
    turn = await started(lc, chat)
    with pytest.raises(pydantic.ValidationError):
        await lc.fail_turn(chat.scope, turn, code)
    assert (await reload(turnstore_backend, turn)).state is TurnState.RUNNING


@pytest.mark.parametrize("partial", [True, False])
async def test_cancel_with_and_without_partial_message(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat, partial: bool
) -> None:
    turn = await started(lc, chat)
    message_id = uuid.uuid4() if partial else None
    assert (await lc.cancel_turn(chat.scope, turn, partial_message_id=message_id)).won
    row = await reload(turnstore_backend, turn)
    assert row.state is TurnState.CANCELLED
    assert row.assistant_message_id == message_id
    assert row.error_code is None


@pytest.mark.parametrize("with_hook", [False, True], ids=["autocommit", "hook"])
@pytest.mark.parametrize("how", ["cancel", "complete", "fail"])
async def test_finalize_outside_scope_is_not_found(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
    how: str,
    with_hook: bool,
) -> None:
    """docs/lifecycle.md, *Out of scope*: finalizing a turn the scope cannot see is "not
    found", as retry and delete are, never a lost race (``won=False``)."""
    turn = await started(lc, chat)
    hook = HookRecorder() if with_hook else None
    foreign = Chat(chat_id=chat.chat_id).scope  # another tenant, the same chat id
    calls: dict[str, Callable[[], Awaitable[FinalizeOutcome]]] = {
        "cancel": lambda: lc.cancel_turn(foreign, turn, hook=hook),
        "complete": lambda: lc.complete_turn(foreign, turn, uuid.uuid4(), hook=hook),
        "fail": lambda: lc.fail_turn(foreign, turn, "provider_error", hook=hook),
    }
    with pytest.raises(TurnNotFoundError) as info:
        await calls[how]()
    assert info.value.turn_id == turn.id
    assert hook is None or hook.rows == []
    assert (await reload(turnstore_backend, turn)).state is TurnState.RUNNING
    # In scope but already finalized: a lost race, not "not found".
    assert (await lc.cancel_turn(chat.scope, turn)).won
    assert not (await lc.fail_turn(chat.scope, turn, "provider_error", hook=hook)).won
    with pytest.raises(TurnNotFoundError):
        await lc.cancel_turn(foreign, turn)


async def test_hook_runs_for_the_winner_with_the_finalized_turn(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    turn = await started(lc, chat)
    hook = HookRecorder()
    outcome = await lc.fail_turn(chat.scope, turn, "quota", hook=hook)
    assert outcome.won
    assert hook.rows == [outcome.turn]
    assert hook.rows[0].state is TurnState.FAILED
    assert hook.rows[0].error_code == "quota"
    assert not (await lc.fail_turn(chat.scope, turn, "quota", hook=hook)).won
    assert len(hook.rows) == 1


async def test_hook_error_rolls_the_transition_back(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    turn = await started(lc, chat)

    async def settle(runner: Any, row: Turn) -> None:
        raise RuntimeError("ledger down")

    with pytest.raises(RuntimeError, match="ledger down"):
        await lc.complete_turn(chat.scope, turn, uuid.uuid4(), hook=settle)
    row = await reload(turnstore_backend, turn)
    assert row.state is TurnState.RUNNING
    assert row.assistant_message_id is None
    assert (await lc.complete_turn(chat.scope, turn, uuid.uuid4())).won


async def test_finalize_in_host_transaction_rolls_back_with_it(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    turn = await started(lc, chat)

    async def complete_then_fail() -> None:
        async with turnstore_backend.store.transaction() as runner:
            assert (await lc.complete_turn(chat.scope, turn, uuid.uuid4(), runner=runner)).won
            raise RuntimeError("outbox full")

    with pytest.raises(RuntimeError, match="outbox full"):
        await complete_then_fail()
    assert (await reload(turnstore_backend, turn)).state is TurnState.RUNNING


async def test_thirty_two_concurrent_finalizers_have_one_winner_and_one_hook_call(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    turn = await started(lc, chat)
    hook = HookRecorder()

    def finalizer(i: int) -> Any:
        if i % 3 == 0:
            return lc.complete_turn(chat.scope, turn, uuid.uuid4(), hook=hook)
        if i % 3 == 1:
            return lc.fail_turn(chat.scope, turn, "provider_error", hook=hook)
        return lc.cancel_turn(chat.scope, turn, hook=hook)

    outcomes = await asyncio.gather(*(finalizer(i) for i in range(32)))
    winners = [o for o in outcomes if o.won]
    assert len(winners) == 1
    row = await reload(turnstore_backend, turn)
    assert row.state is winners[0].state
    assert {o.state for o in outcomes} == {row.state}  # the losers report the winner's state
    assert hook.rows == [row]


# --------------------------------------------------------------------------- mutations


@pytest.mark.parametrize("kind", [MutationKind.RETRY, MutationKind.EDIT])
async def test_retry_and_edit_replace_the_last_turn(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat, kind: MutationKind
) -> None:
    target = await completed(lc, chat)
    mutate = lc.retry_turn if kind is MutationKind.RETRY else lc.edit_turn
    new_turn_id = new_uuid7()
    result = await mutate(
        chat.scope,
        chat.tenant_id,
        chat.chat_id,
        target.request_id,
        chat.user_id,
        new_turn_id=new_turn_id,
    )
    assert result.kind is kind
    assert result.target.id == target.id
    assert result.new_turn is not None
    assert result.new_request_id is not None
    assert result.new_turn.id == new_turn_id
    assert result.new_turn.request_id == result.new_request_id != target.request_id
    assert result.new_turn.state is TurnState.RUNNING
    assert result.new_turn.requester_user_id == chat.user_id
    old = await reload(turnstore_backend, target)
    assert old.deleted_at is not None
    assert old.replaced_by_request_id == result.new_request_id
    assert await latest_of(turnstore_backend, chat) == result.new_turn


async def test_delete_removes_the_last_turn(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    first = await completed(lc, chat)
    second = await completed(lc, chat)
    result = await lc.delete_turn(
        chat.scope, chat.tenant_id, chat.chat_id, second.request_id, chat.user_id
    )
    assert result.kind is MutationKind.DELETE
    assert result.target.id == second.id
    assert result.new_turn is None
    assert result.new_request_id is None
    row = await reload(turnstore_backend, second)
    assert row.deleted_at is not None
    assert row.replaced_by_request_id is None
    latest = await latest_of(turnstore_backend, chat)
    assert latest is not None
    assert latest.id == first.id


async def test_mutation_of_unknown_request_is_not_found(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    await completed(lc, chat)
    with pytest.raises(TurnNotFoundError):
        await lc.retry_turn(chat.scope, chat.tenant_id, chat.chat_id, uuid.uuid4(), chat.user_id)


async def test_mutation_outside_scope_is_not_found(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    turn = await completed(lc, chat)
    with pytest.raises(TurnNotFoundError):
        await lc.delete_turn(
            Chat().scope, chat.tenant_id, chat.chat_id, turn.request_id, chat.user_id
        )
    assert (await reload(turnstore_backend, turn)).deleted_at is None


async def test_deleted_turn_is_a_conflict_not_a_missing_turn(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    """docs/design.md, *Retry, edit and delete*: a deleted target is found (its key still holds it)
    but is never the latest turn, so mutating it again is ``not_latest_turn``."""
    first = await completed(lc, chat)
    turn = await completed(lc, chat)
    await lc.delete_turn(chat.scope, chat.tenant_id, chat.chat_id, turn.request_id, chat.user_id)
    with pytest.raises(NotLatestTurnError) as info:
        await lc.retry_turn(chat.scope, chat.tenant_id, chat.chat_id, turn.request_id, chat.user_id)
    assert info.value.latest_turn_id == first.id
    latest = await latest_of(turnstore_backend, chat)
    assert latest is not None
    assert latest.id == first.id


async def test_two_concurrent_deletes_delete_once_and_the_loser_gets_a_conflict(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    first = await completed(lc, chat)
    turn = await completed(lc, chat)
    results = await asyncio.gather(
        *(
            lc.delete_turn(chat.scope, chat.tenant_id, chat.chat_id, turn.request_id, chat.user_id)
            for _ in range(2)
        ),
        return_exceptions=True,
    )
    assert len([r for r in results if isinstance(r, MutationResult)]) == 1
    losses = [r for r in results if isinstance(r, BaseException)]
    assert len(losses) == 1
    assert isinstance(losses[0], NotLatestTurnError)
    assert (await reload(turnstore_backend, first)).deleted_at is None


async def test_a_scope_naming_one_turn_cannot_make_an_older_turn_the_last(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    """ "Last turn only" is judged on the whole chat: a scope that shows only an older
    turn neither lets it be mutated nor reveals which turn is the latest."""
    older = await completed(lc, chat)
    newest = await completed(lc, chat)
    narrow = AccessScope.for_resource(older.id)
    for mutate in (lc.delete_turn, lc.retry_turn, lc.edit_turn):
        with pytest.raises(NotLatestTurnError) as info:
            await mutate(narrow, chat.tenant_id, chat.chat_id, older.request_id, chat.user_id)
        assert info.value.turn_id == older.id
        assert info.value.latest_turn_id is None
        assert str(info.value) == f"turn {older.id} is not the latest turn of its chat"
    assert (await reload(turnstore_backend, older)).deleted_at is None
    latest = await latest_of(turnstore_backend, chat)
    assert latest is not None
    assert latest.id == newest.id
    # The same scope on the latest turn itself may mutate it.
    result = await lc.delete_turn(
        AccessScope.for_resource(newest.id),
        chat.tenant_id,
        chat.chat_id,
        newest.request_id,
        chat.user_id,
    )
    assert result.target.id == newest.id


async def test_replaced_turn_is_not_the_latest(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    turn = await completed(lc, chat)
    result = await lc.retry_turn(
        chat.scope, chat.tenant_id, chat.chat_id, turn.request_id, chat.user_id
    )
    assert result.new_turn is not None
    with pytest.raises(NotLatestTurnError) as info:
        await lc.retry_turn(chat.scope, chat.tenant_id, chat.chat_id, turn.request_id, chat.user_id)
    assert info.value.latest_turn_id == result.new_turn.id
    with pytest.raises(ForbiddenError):
        await lc.delete_turn(
            chat.scope, chat.tenant_id, chat.chat_id, turn.request_id, uuid.uuid4()
        )


async def test_other_users_turn_is_forbidden_before_any_other_check(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    older = await completed(lc, chat)
    running = await started(lc, chat)
    stranger = uuid.uuid4()
    with pytest.raises(ForbiddenError):
        await lc.retry_turn(chat.scope, chat.tenant_id, chat.chat_id, running.request_id, stranger)
    with pytest.raises(ForbiddenError):
        await lc.delete_turn(chat.scope, chat.tenant_id, chat.chat_id, older.request_id, stranger)
    with pytest.raises(ForbiddenError):
        await lc.delete_turn(chat.scope, chat.tenant_id, chat.chat_id, older.request_id, None)


async def test_running_turn_cannot_be_mutated(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    turn = await started(lc, chat)
    with pytest.raises(InvalidTurnStateError):
        await lc.delete_turn(
            chat.scope, chat.tenant_id, chat.chat_id, turn.request_id, chat.user_id
        )
    row = await reload(turnstore_backend, turn)
    assert row.deleted_at is None
    assert row.state is TurnState.RUNNING


async def test_only_the_latest_turn_can_be_mutated(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    older = await completed(lc, chat)
    newer = await completed(lc, chat)
    with pytest.raises(NotLatestTurnError) as info:
        await lc.retry_turn(
            chat.scope, chat.tenant_id, chat.chat_id, older.request_id, chat.user_id
        )
    assert info.value.latest_turn_id == newer.id
    assert (await reload(turnstore_backend, older)).deleted_at is None
    assert await latest_of(turnstore_backend, chat) == await reload(turnstore_backend, newer)


async def test_mutation_hook_error_rolls_everything_back(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    turn = await completed(lc, chat)
    seen: list[MutationResult] = []

    async def write_message(runner: Any, result: MutationResult) -> None:
        seen.append(result)
        raise RuntimeError("message store down")

    with pytest.raises(RuntimeError, match="message store down"):
        await lc.edit_turn(
            chat.scope,
            chat.tenant_id,
            chat.chat_id,
            turn.request_id,
            chat.user_id,
            hook=write_message,
        )
    assert len(seen) == 1
    assert (await reload(turnstore_backend, turn)).deleted_at is None
    assert await running_of(turnstore_backend, chat) is None


@pytest.mark.parametrize("host_commits", [False, True])
async def test_retry_whose_insert_collides_writes_nothing(
    turnstore_backend: BackendHarness, host_commits: bool
) -> None:
    """The loser's insert comes before its delete, so even a host that catches the
    conflict and commits its own transaction has not deleted the target."""
    store, tap = tapped(turnstore_backend)
    lc = TurnLifecycle(store)
    chat = Chat()
    turn = await completed(lc, chat)
    intruder: list[Turn] = []

    async def start_a_turn_meanwhile() -> None:
        intruder.append(await started(lifecycle_of(turnstore_backend), chat))

    async def retry() -> None:
        await lc.retry_turn(chat.scope, chat.tenant_id, chat.chat_id, turn.request_id, chat.user_id)

    async def retry_in_host_transaction() -> None:
        async with store.transaction() as runner:
            with pytest.raises(GenerationInProgressError):
                await lc.retry_turn(
                    chat.scope,
                    chat.tenant_id,
                    chat.chat_id,
                    turn.request_id,
                    chat.user_id,
                    runner=runner,
                )

    tap.before["create_turn"] = start_a_turn_meanwhile
    if host_commits:
        await retry_in_host_transaction()
    else:
        with pytest.raises(GenerationInProgressError):
            await retry()
    assert (await reload(turnstore_backend, turn)).deleted_at is None
    assert await running_of(turnstore_backend, chat) == intruder[0]


async def test_two_concurrent_retries_make_one_new_turn_and_one_conflict(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    turn = await completed(lc, chat)
    results = await asyncio.gather(
        *(
            lc.retry_turn(chat.scope, chat.tenant_id, chat.chat_id, turn.request_id, chat.user_id)
            for _ in range(2)
        ),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, MutationResult)]
    losses = [r for r in results if isinstance(r, BaseException)]
    assert len(wins) == 1
    assert len(losses) == 1
    assert isinstance(losses[0], NotLatestTurnError)
    running = await running_of(turnstore_backend, chat)
    assert running is not None
    assert running == wins[0].new_turn


async def test_retry_racing_a_delete_of_the_turn_before_never_deletes_a_non_last_turn(
    turnstore_backend: BackendHarness,
    lc: TurnLifecycle[Any],
    chat: Chat,
) -> None:
    """The trap of docs/design.md, *The latest-turn lock*: the delete waits on the retry's lock,
    then must see the new latest turn, not the older turn its first snapshot would offer."""
    before = await completed(lc, chat)
    last = await completed(lc, chat)
    async with turnstore_backend.store.transaction() as runner:
        result = await lc.retry_turn(
            chat.scope, chat.tenant_id, chat.chat_id, last.request_id, chat.user_id, runner=runner
        )
        delete = asyncio.create_task(
            lc.delete_turn(
                chat.scope, chat.tenant_id, chat.chat_id, before.request_id, chat.user_id
            )
        )
        await wait_until_blocked(turnstore_backend, delete)
    with pytest.raises(NotLatestTurnError) as info:
        await delete
    assert result.new_turn is not None
    assert info.value.latest_turn_id == result.new_turn.id
    assert (await reload(turnstore_backend, before)).deleted_at is None
    assert await latest_of(turnstore_backend, chat) == result.new_turn


def test_new_uuid7_is_version_7_and_time_ordered() -> None:
    ids = [new_uuid7() for _ in range(50)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    stamps = [i.int >> 80 for i in ids]
    assert stamps == sorted(stamps)


# --------------------------------------------------------------------------- docs

DOCS = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"


async def test_docs_examples_run(turnstore_backend: BackendHarness) -> None:
    """Every Python block of docs/lifecycle.md runs, and each ``example_*`` function it
    defines passes against the backend's store."""
    namespace: dict[str, Any] = {}
    for block in re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S):
        exec(compile(block, str(DOCS), "exec"), namespace)
    examples = sorted(name for name in namespace if name.startswith("example_"))
    assert examples == [
        "example_a_turn",
        "example_finalize_in_your_transaction",
        "example_history",
        "example_retry",
        "example_watchdog",
    ]
    for name in examples:
        await namespace[name](turnstore_backend.store)


# --- tenants sharing a chat id: docs/lifecycle.md, Out of scope ----------------------------


@pytest.mark.parametrize("mutation", ["delete", "retry", "edit"])
async def test_another_tenant_cannot_mutate_the_turn_nor_wait_for_its_chat(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat, mutation: str
) -> None:
    """Tenant B names tenant A's chat (A's tenant and chat id, B's scope) while A holds the
    chat's lock: B gets ``TurnNotFoundError`` at once, neither waiting for A nor changing A's
    turn; B's own chat with the same id is another chat and is not locked either."""
    target = await reload(turnstore_backend, await completed(lc, chat))
    intruder = Chat(chat_id=chat.chat_id, user_id=chat.user_id)
    call = {"delete": lc.delete_turn, "retry": lc.retry_turn, "edit": lc.edit_turn}[mutation]
    store = turnstore_backend.store
    async with store.transaction() as holder:
        await store.turns.find_latest_for_update(holder, chat.scope, chat.tenant_id, chat.chat_id)
        for tenant in (chat.tenant_id, intruder.tenant_id):
            attempt = call(intruder.scope, tenant, chat.chat_id, target.request_id, chat.user_id)
            with pytest.raises(TurnNotFoundError):
                await asyncio.wait_for(attempt, timeout=5.0)
        with pytest.raises(TurnNotFoundError):
            await asyncio.wait_for(lc.cancel_turn(intruder.scope, target), timeout=5.0)
    assert await reload(turnstore_backend, target) == target


async def test_a_resource_scope_sees_the_chat_through_its_turn(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    """A scope naming turns sees a chat only through them: naming a turn of another chat
    it gets "not found" without waiting for this chat's lock; naming this chat's last turn
    it waits for the lock, then deletes it."""
    target = await completed(lc, chat)
    elsewhere = await completed(lc, Chat(tenant_id=chat.tenant_id, user_id=chat.user_id))
    store = turnstore_backend.store
    blind = AccessScope.for_resource(elsewhere.id)
    seer = AccessScope.for_resource(target.id)
    async with store.transaction() as holder:
        await store.turns.find_latest_for_update(holder, chat.scope, chat.tenant_id, chat.chat_id)
        with pytest.raises(TurnNotFoundError):
            await asyncio.wait_for(
                lc.delete_turn(
                    blind, chat.tenant_id, chat.chat_id, target.request_id, chat.user_id
                ),
                timeout=5.0,
            )
        delete = asyncio.create_task(
            lc.delete_turn(seer, chat.tenant_id, chat.chat_id, target.request_id, chat.user_id)
        )
        await wait_until_blocked(turnstore_backend, delete)
    result = await asyncio.wait_for(delete, timeout=30.0)
    assert result.target.id == target.id
