"""What a chat service needs from the lifecycle (docs/lifecycle.md): finalize outcomes that
report the turn's real state, the refusals of a start told apart (a resend still running, a
key sent with another request), and a retry the client can send again safely."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from lifecycle_support import Chat, HookRecorder, tapped
from turnstore import retention
from turnstore.errors import (
    DuplicateRequestError,
    ForbiddenError,
    GenerationInProgressError,
    NotLatestTurnError,
    RequestFingerprintMismatchError,
    RequestInProgressError,
    TurnNotFoundError,
)
from turnstore.fingerprint import request_fingerprint
from turnstore.lifecycle import MutationKind, RejectReason, StartKind, TurnLifecycle
from turnstore.model import Turn, TurnState
from turnstore.testing.backends import BackendHarness


@pytest.fixture
def lc(turnstore_backend: BackendHarness) -> TurnLifecycle[Any]:
    return TurnLifecycle(turnstore_backend.store)


@pytest.fixture
def chat() -> Chat:
    return Chat()


async def started(lc: TurnLifecycle[Any], chat: Chat, fingerprint: str | None = None) -> Turn:
    params = chat.params().model_copy(update={"request_fingerprint": fingerprint})
    outcome = await lc.begin_turn(chat.scope, params)
    assert outcome.turn is not None
    assert outcome.started
    return outcome.turn


# --------------------------------------------------------------------------- finalize


@pytest.mark.parametrize("first", ["cancel", "fail"])
async def test_a_late_complete_reports_the_state_it_lost_to(
    lc: TurnLifecycle[Any], chat: Chat, first: str
) -> None:
    turn = await started(lc, chat)
    if first == "cancel":
        assert (await lc.cancel_turn(chat.scope, turn)).state is TurnState.CANCELLED
    else:
        assert (await lc.fail_turn(chat.scope, turn, "provider_error")).state is TurnState.FAILED
    late = await lc.complete_turn(chat.scope, turn, uuid.uuid4(), hook=HookRecorder())
    expected = TurnState.CANCELLED if first == "cancel" else TurnState.FAILED
    assert (late.won, late.state) == (False, expected)
    assert late.turn is not None
    assert late.turn.state is expected


async def test_the_winner_reads_nothing_more_and_only_a_loser_reads_the_turn(
    turnstore_backend: BackendHarness, chat: Chat
) -> None:
    store, tap = tapped(turnstore_backend)
    lc = TurnLifecycle(store)
    turn = await started(lc, chat)
    tap.calls.clear()
    won = await lc.complete_turn(chat.scope, turn, uuid.uuid4())
    assert won.won
    assert won.state is TurnState.COMPLETED
    assert dict(tap.calls) == {"cas_update_completed": 1}
    lost = await lc.cancel_turn(chat.scope, turn)
    assert (lost.won, lost.state) == (False, TurnState.COMPLETED)
    assert dict(tap.calls) == {"cas_update_completed": 1, "cas_update_state": 1, "get_turn": 1}


async def test_finalizing_an_erased_turn_is_not_found(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    """An erased turn is a turn that does not exist: not found, as out of scope."""
    turn = await started(lc, chat)
    await retention.erase_tenant(turnstore_backend.store, chat.tenant_id)
    with pytest.raises(TurnNotFoundError):
        await lc.complete_turn(chat.scope, turn, uuid.uuid4())


# --------------------------------------------------------------------------- start


async def test_a_resend_while_the_request_runs_is_in_progress(
    lc: TurnLifecycle[Any], chat: Chat
) -> None:
    turn = await started(lc, chat)
    outcome = await lc.begin_turn(chat.scope, chat.params(turn.request_id))
    assert outcome.kind is StartKind.REJECTED
    assert outcome.reason is RejectReason.REQUEST_IN_PROGRESS
    assert outcome.turn == turn
    error = outcome.error(chat.chat_id, turn.request_id)
    assert isinstance(error, RequestInProgressError)
    assert isinstance(error, DuplicateRequestError)
    assert (error.code, error.retryable, error.existing_turn_id) == (
        "request_in_progress",
        True,
        turn.id,
    )
    # Once it completes, the same resend replays.
    await lc.complete_turn(chat.scope, turn, uuid.uuid4())
    assert (await lc.begin_turn(chat.scope, chat.params(turn.request_id))).replayed


@pytest.mark.parametrize("finish", [False, True], ids=["running", "completed"])
async def test_the_same_request_id_with_another_fingerprint_is_refused(
    lc: TurnLifecycle[Any], chat: Chat, finish: bool
) -> None:
    asked = request_fingerprint({"message": "hello", "model": "m"})
    turn = await started(lc, chat, asked)
    assert turn.request_fingerprint == asked
    if finish:
        await lc.complete_turn(chat.scope, turn, uuid.uuid4())
    other = request_fingerprint({"message": "something else", "model": "m"})
    params = chat.params(turn.request_id)
    outcome = await lc.begin_turn(
        chat.scope, params.model_copy(update={"request_fingerprint": other})
    )
    assert outcome.reason is RejectReason.REQUEST_FINGERPRINT_MISMATCH
    assert outcome.turn is not None
    assert outcome.turn.id == turn.id
    error = outcome.error(chat.chat_id, turn.request_id)
    assert isinstance(error, RequestFingerprintMismatchError)
    assert error.code == "request_fingerprint_mismatch"
    # The same fingerprint (key order does not matter), or none, is the same request.
    same = request_fingerprint({"model": "m", "message": "hello"})
    for fingerprint in (same, None):
        again = await lc.begin_turn(
            chat.scope, params.model_copy(update={"request_fingerprint": fingerprint})
        )
        expected = RejectReason.REQUEST_IN_PROGRESS if not finish else None
        assert again.reason is expected
        assert again.replayed is finish


async def test_each_reason_has_its_own_error(lc: TurnLifecycle[Any], chat: Chat) -> None:
    running = await started(lc, chat)
    busy = await lc.begin_turn(chat.scope, chat.params())
    assert busy.reason is RejectReason.GENERATION_IN_PROGRESS
    assert isinstance(busy.error(chat.chat_id, uuid.uuid4()), GenerationInProgressError)
    await lc.fail_turn(chat.scope, running, "provider_error")
    conflict = await lc.begin_turn(chat.scope, chat.params(running.request_id))
    assert conflict.reason is RejectReason.REQUEST_ID_CONFLICT
    error = conflict.error(chat.chat_id, running.request_id)
    assert type(error) is DuplicateRequestError
    assert error.code == "request_id_conflict"
    assert (await lc.begin_turn(chat.scope, chat.params())).error(chat.chat_id, uuid.uuid4()) is (
        None
    )


# --------------------------------------------------------------------------- retry


async def completed(lc: TurnLifecycle[Any], chat: Chat) -> Turn:
    turn = await started(lc, chat)
    assert (await lc.complete_turn(chat.scope, turn, uuid.uuid4())).won
    return turn


@pytest.mark.parametrize("kind", [MutationKind.RETRY, MutationKind.EDIT])
async def test_a_retry_sent_again_gets_what_the_first_one_got(
    turnstore_backend: BackendHarness, chat: Chat, kind: MutationKind
) -> None:
    store, tap = tapped(turnstore_backend)
    lc = TurnLifecycle(store)
    target = await completed(lc, chat)
    mutate = lc.retry_turn if kind is MutationKind.RETRY else lc.edit_turn
    new_request_id = uuid.uuid4()
    hook = HookRecorder()

    async def send() -> Any:
        return await mutate(
            chat.scope,
            chat.tenant_id,
            chat.chat_id,
            target.request_id,
            chat.user_id,
            new_request_id=new_request_id,
            hook=lambda run, result: hook(run, result.target),
        )

    first = await send()
    assert first.repeated is None
    assert first.new_request_id == new_request_id
    assert first.new_turn is not None
    assert first.new_turn.request_id == new_request_id
    assert len(hook.rows) == 1

    tap.calls.clear()
    again = await send()
    assert again.kind is kind
    assert again.repeated is not None
    assert again.repeated.reason is RejectReason.REQUEST_IN_PROGRESS
    assert again.new_turn == first.new_turn
    assert again.new_request_id == new_request_id
    assert "create_turn" not in tap.calls
    assert "soft_delete" not in tap.calls
    assert len(hook.rows) == 1  # nothing was done again

    assert (await lc.complete_turn(chat.scope, first.new_turn, uuid.uuid4())).won
    replay = await send()
    assert replay.repeated is not None
    assert replay.repeated.kind is StartKind.REPLAY
    assert replay.new_turn is not None
    assert replay.new_turn.state is TurnState.COMPLETED


async def test_a_retry_with_another_request_id_is_still_not_the_latest(
    lc: TurnLifecycle[Any], chat: Chat
) -> None:
    target = await completed(lc, chat)
    await lc.retry_turn(
        chat.scope,
        chat.tenant_id,
        chat.chat_id,
        target.request_id,
        chat.user_id,
        new_request_id=uuid.uuid4(),
    )
    for other in (uuid.uuid4(), None):
        with pytest.raises(NotLatestTurnError):
            await lc.retry_turn(
                chat.scope,
                chat.tenant_id,
                chat.chat_id,
                target.request_id,
                chat.user_id,
                new_request_id=other,
            )


async def test_a_repeated_retry_by_another_user_is_forbidden(
    lc: TurnLifecycle[Any], chat: Chat
) -> None:
    target = await completed(lc, chat)
    new_request_id = uuid.uuid4()
    await lc.retry_turn(
        chat.scope,
        chat.tenant_id,
        chat.chat_id,
        target.request_id,
        chat.user_id,
        new_request_id=new_request_id,
    )
    with pytest.raises(ForbiddenError):
        await lc.retry_turn(
            chat.scope,
            chat.tenant_id,
            chat.chat_id,
            target.request_id,
            uuid.uuid4(),
            new_request_id=new_request_id,
        )


async def test_a_repeat_whose_new_turn_was_purged_is_a_conflict(
    turnstore_backend: BackendHarness, lc: TurnLifecycle[Any], chat: Chat
) -> None:
    target = await completed(lc, chat)
    new_request_id = uuid.uuid4()
    first = await lc.retry_turn(
        chat.scope,
        chat.tenant_id,
        chat.chat_id,
        target.request_id,
        chat.user_id,
        new_request_id=new_request_id,
    )
    assert first.new_turn is not None
    await lc.fail_turn(chat.scope, first.new_turn, "provider_error")
    again = await lc.retry_turn(
        chat.scope,
        chat.tenant_id,
        chat.chat_id,
        target.request_id,
        chat.user_id,
        new_request_id=new_request_id,
    )
    assert again.repeated is not None
    assert again.repeated.reason is RejectReason.REQUEST_ID_CONFLICT
