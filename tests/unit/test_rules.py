"""The pure rules of a turn (docs/design.md), checked against its words.

Each rule gets a property test against an oracle written from docs/design.md, plus examples at the
edges (the orphan boundary, ties in ordering, the precedence of the mutation checks), so that
removing or reordering any condition fails a test.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from enum import Enum
from typing import Any
from uuid import UUID

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from strategies import TERMINAL_STATES, ids_from, timestamps, turns
from turnstore.errors import (
    DuplicateRequestError,
    DuplicateTurnIdError,
    ForbiddenError,
    GenerationInProgressError,
    InvalidParameterError,
    InvalidTurnStateError,
    NotLatestTurnError,
    ScopeDeniedError,
    TurnNotFoundError,
    TurnStoreError,
)
from turnstore.model import CreateTurnParams, RequesterType, ToolCallType, Turn, TurnState
from turnstore.rules import (
    MAX_INSERT_ATTEMPTS,
    MAX_RELOCKS,
    ORPHAN_ERROR_CODE,
    StartDecision,
    can_transition,
    check_tool,
    decide_start,
    holds_running_slot,
    insert_refusal,
    is_live,
    is_orphan,
    is_purgeable,
    latest_sort_key,
    mutation_rejection,
    orphan_cutoff,
    orphan_sort_key,
    pick_latest,
    preflight_update_applies,
    progress_update_applies,
    purge_cutoff,
    repeats_mutation,
    terminal_cas_applies,
    tool_increment_applies,
)

MICROSECOND = timedelta(microseconds=1)
RUNNING = TurnState.RUNNING
COMPLETED = TurnState.COMPLETED


def rows(**options: Any) -> st.SearchStrategy[Turn]:
    """Rows without the payload no rule reads (see ``strategies.turns``)."""
    return turns(payload=False, **options)


running_turns = rows(states=st.just(RUNNING), deleted=False)
terminal_states = st.sampled_from(TERMINAL_STATES)
timeouts = st.integers(min_value=0, max_value=7 * 24 * 3600)


def _with(turn: Turn, **changes: object) -> Turn:
    """A copy of ``turn`` with ``changes``, re-validated as a row."""
    return Turn(**{**turn.model_dump(), **changes})


# --- transitions ---------------------------------------------------------------------------


@pytest.mark.parametrize("current", list(TurnState), ids=str)
@pytest.mark.parametrize("target", list(TurnState), ids=str)
def test_can_transition_only_from_running_to_terminal(
    current: TurnState, target: TurnState
) -> None:
    expected = current is RUNNING and target is not RUNNING
    assert can_transition(current, target) is expected


@given(targets=st.lists(st.sampled_from(TurnState), max_size=8))
def test_terminal_states_absorb(targets: list[TurnState]) -> None:
    """Walking any sequence of requested transitions from ``running``: the first terminal
    target wins, and nothing moves the turn afterwards."""
    state = RUNNING
    moves = 0
    for target in targets:
        if can_transition(state, target):
            state = target
            moves += 1
    first_terminal = next((t for t in targets if t.is_terminal), RUNNING)
    assert state is first_terminal
    assert moves == (0 if first_terminal is RUNNING else 1)


# --- CAS and other update predicates ---------------------------------------------------------


@given(turn=rows())
def test_finalizing_cas_applies_exactly_to_running_rows(turn: Turn) -> None:
    assert terminal_cas_applies(turn) is (turn.state is RUNNING)


@given(turn=rows())
def test_keep_alive_and_preflight_apply_exactly_to_running_rows(turn: Turn) -> None:
    assert progress_update_applies(turn) is (turn.state is RUNNING)
    assert preflight_update_applies(turn) is (turn.state is RUNNING)


@given(turn=rows())
def test_tool_counts_apply_to_running_live_rows_only(turn: Turn) -> None:
    assert tool_increment_applies(turn) is (turn.state is RUNNING and turn.deleted_at is None)


@given(turn=rows())
def test_running_slot_and_liveness(turn: Turn) -> None:
    assert is_live(turn) is (turn.deleted_at is None)
    assert holds_running_slot(turn) is (turn.state is RUNNING and turn.deleted_at is None)


@given(turn=rows(states=st.just(RUNNING), deleted=True))
def test_deleted_running_row_still_finalizes_but_counts_no_tools(turn: Turn) -> None:
    """The CAS predicate is ``state = 'running'`` alone (a replaced turn that was still
    running must still be finalizable), while tool counting also needs a live row."""
    assert terminal_cas_applies(turn)
    assert progress_update_applies(turn)
    assert not tool_increment_applies(turn)
    assert not holds_running_slot(turn)


@given(turn=running_turns, attempts=st.lists(terminal_states, min_size=1, max_size=32))
def test_of_many_finalizers_exactly_one_wins(turn: Turn, attempts: list[TurnState]) -> None:
    """Applying the CAS of each finalizer in turn: one row affected in total."""
    wins = []
    for target in attempts:
        if terminal_cas_applies(turn):
            assert can_transition(turn.state, target)
            turn = _with(turn, state=target, completed_at=turn.updated_at)
            wins.append(target)
    assert wins == attempts[:1]


# --- orphans --------------------------------------------------------------------------------


@given(turn=rows(), now=timestamps(), timeout=timeouts)
def test_is_orphan_matches_the_spec(turn: Turn, now: datetime, timeout: int) -> None:
    expected = (
        turn.state is RUNNING
        and turn.deleted_at is None
        and turn.last_progress_at is not None
        and turn.last_progress_at <= now - timedelta(seconds=timeout)
    )
    assert is_orphan(turn, now, timeout) is expected
    assert orphan_cutoff(now, timeout) == now - timedelta(seconds=timeout)


@given(turn=running_turns, timeout=timeouts)
def test_orphan_boundary_is_inclusive_to_the_microsecond(turn: Turn, timeout: int) -> None:
    assert turn.last_progress_at is not None
    at_cutoff = turn.last_progress_at + timedelta(seconds=timeout)
    assert is_orphan(turn, at_cutoff, timeout)
    assert is_orphan(turn, at_cutoff + MICROSECOND, timeout)
    assert not is_orphan(turn, at_cutoff - MICROSECOND, timeout)
    # The same boundary seen from the row: progress one microsecond later is fresh.
    renewed = _with(turn, last_progress_at=turn.last_progress_at + MICROSECOND)
    assert not is_orphan(renewed, at_cutoff, timeout)


@given(
    turn=rows(),
    timeout=timeouts,
    late=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)),
)
def test_deleted_or_terminal_turns_are_never_orphans(
    turn: Turn, timeout: int, late: timedelta
) -> None:
    assume(turn.state is not RUNNING or turn.deleted_at is not None)
    assert turn.last_progress_at is not None
    now = turn.last_progress_at + timedelta(seconds=timeout) + late
    assert not is_orphan(turn, now, timeout)


@given(
    candidates=st.lists(
        rows(
            ids=ids_from([UUID(int=i) for i in range(1, 9)]),
            states=st.just(RUNNING),
            deleted=False,
        ),
        unique_by=lambda t: t.id,
        max_size=8,
    ),
    progress=st.lists(st.sampled_from([0, 0, 1, 2]), min_size=8, max_size=8),
)
def test_orphans_come_oldest_progress_first_ties_by_id(
    candidates: list[Turn], progress: list[int]
) -> None:
    base = datetime.fromisoformat("2030-01-01T00:00:00+00:00")
    rows = [
        _with(t, last_progress_at=base + timedelta(seconds=p), started_at=base)
        for t, p in zip(candidates, progress, strict=False)
    ]
    ordered = sorted(rows, key=orphan_sort_key)
    keys = [(t.last_progress_at, t.id) for t in ordered]
    assert keys == sorted(keys)
    assert all(orphan_sort_key(t) == (t.last_progress_at, t.id) for t in rows)


# --- the latest turn ----------------------------------------------------------------------------

_FEW_INSTANTS = [datetime.fromisoformat(f"2030-01-01T00:00:0{i}+00:00") for i in range(3)]
chat_histories = st.lists(
    rows(
        ids=ids_from([UUID(int=i) for i in range(1, 9)]),
        started_ats=st.sampled_from(_FEW_INSTANTS),
    ),
    unique_by=lambda t: t.id,
    max_size=6,
)


@given(history=chat_histories, data=st.data())
def test_pick_latest_is_the_greatest_started_at_then_id_among_live_rows(
    history: list[Turn], data: st.DataObject
) -> None:
    live = [t for t in history if t.deleted_at is None]
    latest = pick_latest(data.draw(st.permutations(history)))
    if not live:
        assert latest is None
        return
    assert latest is not None
    assert latest.deleted_at is None
    for other in live:
        if other.id != latest.id:
            assert (other.started_at, other.id) < (latest.started_at, latest.id)
    assert latest_sort_key(latest) == (latest.started_at, latest.id)


@given(history=chat_histories.filter(bool))
def test_a_deleted_turn_is_never_the_latest(history: list[Turn]) -> None:
    newest = max(history, key=lambda t: (t.started_at, t.id))
    deleted = _with(newest, deleted_at=newest.updated_at)
    rest = [t for t in history if t.id != newest.id]
    assert pick_latest([*rest, deleted]) == pick_latest(rest)


def test_ties_on_started_at_break_by_id() -> None:
    """Turns created in one statement share ``started_at``; the greater id is later."""
    instant = _FEW_INSTANTS[0]
    low, high = (
        _example_turn(UUID(int=1), started_at=instant),
        _example_turn(UUID(int=2), started_at=instant),
    )
    assert pick_latest([low, high]) == high
    assert pick_latest([high, low]) == high
    older_high = _example_turn(UUID(int=3), started_at=instant - MICROSECOND)
    assert pick_latest([older_high, low]) == low


_T0 = _FEW_INSTANTS[0]
_SOME_USER = UUID(int=300)


def _example_turn(
    turn_id: UUID,
    *,
    started_at: datetime = _T0,
    state: TurnState = RUNNING,
    deleted: bool = False,
    user: UUID | None = _SOME_USER,
) -> Turn:
    """A consistent row of one chat: a user turn of ``user``, or a system turn if None."""
    later = started_at + timedelta(seconds=1)
    return Turn(
        id=turn_id,
        tenant_id=UUID(int=100),
        chat_id=UUID(int=200),
        request_id=turn_id,
        requester_type=RequesterType.USER if user is not None else RequesterType.SYSTEM,
        requester_user_id=user,
        state=state,
        error_code=ORPHAN_ERROR_CODE if state is TurnState.FAILED else None,
        assistant_message_id=UUID(int=400) if state is COMPLETED else None,
        started_at=started_at,
        last_progress_at=started_at,
        completed_at=later if state.is_terminal else None,
        deleted_at=later if deleted else None,
        updated_at=later,
    )


# --- starting a turn (docs/design.md) ------------------------------------------------------------


def _expected_start(
    existing: Turn | None, running: Turn | None, fingerprint: str | None = None
) -> StartDecision:
    if existing is not None:
        stored = existing.request_fingerprint
        if stored is not None and fingerprint is not None and stored != fingerprint:
            return StartDecision.REQUEST_FINGERPRINT_MISMATCH
        if existing.state is COMPLETED and existing.deleted_at is None:
            return StartDecision.REPLAY
        if existing.state is RUNNING and existing.deleted_at is None:
            return StartDecision.REQUEST_IN_PROGRESS
        return StartDecision.REQUEST_ID_CONFLICT
    if running is not None:
        return StartDecision.GENERATION_IN_PROGRESS
    return StartDecision.START


_FINGERPRINTS = st.none() | st.sampled_from(["a" * 64, "b" * 64])


@given(
    existing=st.none() | rows(),
    running=st.none() | running_turns,
    stored=_FINGERPRINTS,
    given_fp=_FINGERPRINTS,
)
def test_decide_start_follows_the_spec_order(
    existing: Turn | None, running: Turn | None, stored: str | None, given_fp: str | None
) -> None:
    if existing is not None:
        existing = existing.model_copy(update={"request_fingerprint": stored})
    assert decide_start(existing, running, given_fp) is _expected_start(existing, running, given_fp)


OTHER_RUNNING = _example_turn(UUID(int=99))


@pytest.mark.parametrize("running", [None, OTHER_RUNNING], ids=["idle", "busy"])
def test_completed_answer_replays_even_while_another_turn_runs(running: Turn | None) -> None:
    existing = _example_turn(UUID(int=1), state=COMPLETED)
    assert decide_start(existing, running) is StartDecision.REPLAY


@pytest.mark.parametrize("running", [None, OTHER_RUNNING], ids=["idle", "busy"])
def test_a_resend_of_a_running_request_is_in_progress_not_a_conflict(
    running: Turn | None,
) -> None:
    existing = _example_turn(UUID(int=1), state=RUNNING)
    assert decide_start(existing, running) is StartDecision.REQUEST_IN_PROGRESS


@pytest.mark.parametrize("state", list(TurnState))
@pytest.mark.parametrize("deleted", [False, True])
def test_another_fingerprint_is_refused_before_replay_or_progress(
    state: TurnState, deleted: bool
) -> None:
    existing = _example_turn(UUID(int=1), state=state, deleted=deleted).model_copy(
        update={"request_fingerprint": "a" * 64}
    )
    mismatch = StartDecision.REQUEST_FINGERPRINT_MISMATCH
    assert decide_start(existing, None, "b" * 64) is mismatch
    assert decide_start(existing, None, "a" * 64) is not mismatch
    # Nothing to compare: a request without a fingerprint, or a turn stored without one.
    assert decide_start(existing, None, None) is not mismatch
    unprinted = existing.model_copy(update={"request_fingerprint": None})
    assert decide_start(unprinted, None, "b" * 64) is not mismatch


@pytest.mark.parametrize("running", [None, OTHER_RUNNING], ids=["idle", "busy"])
@pytest.mark.parametrize(
    ("state", "deleted"),
    [
        (COMPLETED, True),
        (RUNNING, True),
        (TurnState.FAILED, False),
        (TurnState.CANCELLED, False),
        (TurnState.FAILED, True),
    ],
)
def test_any_other_existing_turn_is_a_conflict_before_the_running_check(
    state: TurnState, deleted: bool, running: Turn | None
) -> None:
    """A deleted completed turn included: its answer is no longer part of the chat."""
    existing = _example_turn(UUID(int=1), state=state, deleted=deleted)
    assert decide_start(existing, running) is StartDecision.REQUEST_ID_CONFLICT


def test_a_running_turn_blocks_a_new_request() -> None:
    assert decide_start(None, OTHER_RUNNING) is StartDecision.GENERATION_IN_PROGRESS
    assert decide_start(None, None) is StartDecision.START


# --- retry, edit, delete (docs/design.md) --------------------------------------------------------

USERS = [UUID(int=1000), UUID(int=1001)]
OWNER, STRANGER = USERS
CHAT = UUID(int=2000)
REQUEST = UUID(int=3000)


def _expected_rejection(
    target: Turn | None, latest: Turn | None, actor: UUID | None
) -> type[TurnStoreError] | None:
    if target is None:
        return TurnNotFoundError
    if target.requester_user_id is None or target.requester_user_id != actor:
        return ForbiddenError
    if target.state is RUNNING:
        return InvalidTurnStateError
    if target.deleted_at is not None or latest is None or latest.id != target.id:
        return NotLatestTurnError
    return None


mutation_turns = rows(ids=ids_from([UUID(int=i) for i in range(1, 4)]), user_ids=ids_from(USERS))


@st.composite
def mutation_cases(draw: st.DrawFn) -> tuple[Turn | None, Turn | None, UUID | None]:
    target = draw(st.none() | mutation_turns)
    choices = [st.none(), mutation_turns]
    if target is not None:
        choices.append(st.just(target))
    latest = draw(st.one_of(choices))
    actor = draw(st.none() | ids_from(USERS))
    return target, latest, actor


def _reject(target: Turn | None, latest: Turn | None, actor: UUID | None) -> object:
    return mutation_rejection(target, latest, actor, chat_id=CHAT, request_id=REQUEST)


@given(case=mutation_cases())
def test_mutation_rejection_follows_the_spec_order(
    case: tuple[Turn | None, Turn | None, UUID | None],
) -> None:
    target, latest, actor = case
    error = _reject(target, latest, actor)
    expected = _expected_rejection(target, latest, actor)
    if expected is None:
        assert error is None
        return
    assert type(error) is expected
    if isinstance(error, TurnNotFoundError):
        assert (error.chat_id, error.request_id) == (CHAT, REQUEST)
    elif isinstance(error, ForbiddenError):
        assert target is not None
        assert (error.turn_id, error.actor_user_id) == (target.id, actor)
    elif isinstance(error, InvalidTurnStateError):
        assert target is not None
        assert (error.turn_id, error.state) == (target.id, "running")
    elif isinstance(error, NotLatestTurnError):
        assert target is not None
        assert error.turn_id == target.id
        assert error.latest_turn_id == (latest.id if latest is not None else None)


#: The running target of OWNER and a different latest turn: every check but the first
#: two fails for it, so each test below shows one check taking precedence.
RUNNING_TARGET = _example_turn(UUID(int=1), user=OWNER)
NEWER = _example_turn(UUID(int=2), started_at=_T0 + timedelta(seconds=5), state=COMPLETED)


@pytest.mark.parametrize("actor", [OWNER, STRANGER, None])
@pytest.mark.parametrize("latest", [None, NEWER], ids=["no-latest", "newer"])
def test_missing_target_is_not_found_before_anything_else(
    actor: UUID | None, latest: Turn | None
) -> None:
    assert isinstance(_reject(None, latest, actor), TurnNotFoundError)


@pytest.mark.parametrize("latest", [None, NEWER], ids=["no-latest", "newer"])
def test_a_deleted_target_is_a_conflict_not_a_missing_turn(latest: Turn | None) -> None:
    """A deleted target still holds its idempotency key, so it is found; it is never the
    latest turn: the loser of two concurrent mutations gets ``not_latest_turn``."""
    for state in (COMPLETED, RUNNING):
        deleted = _example_turn(UUID(int=1), user=OWNER, state=state, deleted=True)
        expected = InvalidTurnStateError if state is RUNNING else NotLatestTurnError
        assert isinstance(_reject(deleted, latest, OWNER), expected)
        # The actor check still comes first.
        assert isinstance(_reject(deleted, latest, STRANGER), ForbiddenError)
    # Even when a caller passes the deleted turn itself as the latest.
    done_and_deleted = _example_turn(UUID(int=1), user=OWNER, state=COMPLETED, deleted=True)
    assert isinstance(_reject(done_and_deleted, done_and_deleted, OWNER), NotLatestTurnError)


@pytest.mark.parametrize("actor", [STRANGER, None])
@pytest.mark.parametrize("latest", [None, NEWER, RUNNING_TARGET], ids=["none", "newer", "self"])
def test_forbidden_before_state_and_latest_checks(actor: UUID | None, latest: Turn | None) -> None:
    assert isinstance(_reject(RUNNING_TARGET, latest, actor), ForbiddenError)


@pytest.mark.parametrize("actor", [OWNER, STRANGER, None])
def test_system_turns_are_forbidden_to_every_actor(actor: UUID | None) -> None:
    """A turn without a requesting user belongs to no actor, not even to ``None``."""
    system_turn = _example_turn(UUID(int=1), state=COMPLETED, user=None)
    assert isinstance(_reject(system_turn, system_turn, actor), ForbiddenError)


@pytest.mark.parametrize("latest", [None, NEWER, RUNNING_TARGET], ids=["none", "newer", "self"])
def test_running_before_not_latest(latest: Turn | None) -> None:
    error = _reject(RUNNING_TARGET, latest, OWNER)
    assert isinstance(error, InvalidTurnStateError)
    assert error.state == "running"


@pytest.mark.parametrize("state", TERMINAL_STATES, ids=str)
def test_only_the_latest_turn_may_be_mutated(state: TurnState) -> None:
    target = _example_turn(UUID(int=1), state=state, user=OWNER)
    for latest in (NEWER, None):
        error = _reject(target, latest, OWNER)
        assert isinstance(error, NotLatestTurnError)
        assert error.latest_turn_id == (latest.id if latest is not None else None)
    assert _reject(target, target, OWNER) is None
    # The latest turn as re-read under the lock is the same turn even as a new object.
    reread = _with(target, updated_at=target.updated_at + MICROSECOND)
    assert _reject(target, reread, OWNER) is None


def test_orphan_error_code() -> None:
    assert ORPHAN_ERROR_CODE == "orphan_timeout"


# --- refusing an insert ------------------------------------------------------------------

_NEW = CreateTurnParams(
    id=UUID(int=1),
    tenant_id=UUID(int=2),
    chat_id=UUID(int=3),
    request_id=UUID(int=4),
    requester_type=RequesterType.USER,
    requester_user_id=UUID(int=5),
)
_EXISTING_ID = UUID(int=6)
_RUNNING_ID = UUID(int=7)

#: The refusals, the winner first: the order ``insert_refusal`` must keep.
_REFUSAL_ORDER: list[tuple[str, type[TurnStoreError]]] = [
    ("scope_denied", ScopeDeniedError),
    ("id_taken", DuplicateTurnIdError),
    ("request_taken", DuplicateRequestError),
    ("chat_running", GenerationInProgressError),
]
_CONFLICT_NAMES = [name for name, _ in _REFUSAL_ORDER]
#: Every combination of conflicts, from none to all four.
_CONFLICT_SETS = [
    frozenset(names)
    for size in range(len(_CONFLICT_NAMES) + 1)
    for names in itertools.combinations(_CONFLICT_NAMES, size)
]


def _refusal(conflicts: frozenset[str], visible: frozenset[UUID]) -> TurnStoreError | None:
    return insert_refusal(
        _NEW,
        permitted="scope_denied" not in conflicts,
        id_taken="id_taken" in conflicts,
        existing_id=_EXISTING_ID if "request_taken" in conflicts else None,
        running_id=_RUNNING_ID if "chat_running" in conflicts else None,
        visible=visible,
    )


@pytest.mark.parametrize("conflicts", _CONFLICT_SETS, ids=lambda c: "+".join(sorted(c)) or "none")
def test_the_first_conflict_in_order_refuses_the_insert(conflicts: frozenset[str]) -> None:
    expected = next((error for name, error in _REFUSAL_ORDER if name in conflicts), None)
    refusal = _refusal(conflicts, frozenset({_EXISTING_ID, _RUNNING_ID}))
    if expected is None:
        assert refusal is None
    else:
        assert type(refusal) is expected


@pytest.mark.parametrize("shown", [True, False], ids=["visible", "hidden"])
def test_an_insert_refusal_names_the_conflicting_turn_only_when_visible(shown: bool) -> None:
    visible = frozenset({_EXISTING_ID, _RUNNING_ID}) if shown else frozenset()
    duplicate = _refusal(frozenset({"request_taken", "chat_running"}), visible)
    assert isinstance(duplicate, DuplicateRequestError)
    assert (duplicate.chat_id, duplicate.request_id) == (_NEW.chat_id, _NEW.request_id)
    assert duplicate.existing_turn_id == (_EXISTING_ID if shown else None)
    busy = _refusal(frozenset({"chat_running"}), visible)
    assert isinstance(busy, GenerationInProgressError)
    assert busy.chat_id == _NEW.chat_id
    assert busy.running_turn_id == (_RUNNING_ID if shown else None)
    # Visibility is per turn: seeing the running turn does not reveal the key's holder.
    only_running = _refusal(frozenset({"request_taken"}), frozenset({_RUNNING_ID}))
    assert isinstance(only_running, DuplicateRequestError)
    assert only_running.existing_turn_id is None


def test_an_insert_refusal_names_the_new_row() -> None:
    denied = _refusal(_CONFLICT_SETS[-1], frozenset())
    assert isinstance(denied, ScopeDeniedError)
    assert (denied.turn_id, denied.tenant_id) == (_NEW.id, _NEW.tenant_id)
    duplicate_id = _refusal(frozenset({"id_taken", "request_taken"}), frozenset())
    assert isinstance(duplicate_id, DuplicateTurnIdError)
    assert duplicate_id.turn_id == _NEW.id


# --- tool counters -----------------------------------------------------------------------


@pytest.mark.parametrize("tool", list(ToolCallType), ids=str)
def test_check_tool_accepts_a_member_or_its_value(tool: ToolCallType) -> None:
    assert check_tool(tool) is tool
    assert check_tool(tool.value) is tool


class _LookAlike(str, Enum):
    WEB_SEARCH = "web_searches"


@pytest.mark.parametrize(
    "tool",
    ["bogus", "WEB_SEARCH", "web_search_completed_count", "", 0, None, [], _LookAlike.WEB_SEARCH],
    ids=repr,
)
def test_check_tool_refuses_anything_else(tool: object) -> None:
    with pytest.raises(InvalidParameterError, match="tool must be a ToolCallType, got "):
        check_tool(tool)


def test_retry_bounds_allow_at_least_one_retry() -> None:
    """A bound of one would give up at the first replaced row or vanished conflict."""
    assert isinstance(MAX_RELOCKS, int)
    assert isinstance(MAX_INSERT_ATTEMPTS, int)
    assert MAX_RELOCKS > 1
    assert MAX_INSERT_ATTEMPTS > 1


# --- repeated retry, retention (docs/design.md, docs/retention.md) --------------------------


def test_a_mutation_repeats_only_with_the_request_id_that_replaced_the_target() -> None:
    new_request = UUID(int=5000)
    replaced = _example_turn(UUID(int=1), state=COMPLETED, deleted=True).model_copy(
        update={"replaced_by_request_id": new_request}
    )
    assert repeats_mutation(replaced, new_request)
    assert not repeats_mutation(replaced, UUID(int=5001))
    assert not repeats_mutation(replaced, None)
    live = replaced.model_copy(update={"deleted_at": None})
    assert not repeats_mutation(live, new_request)
    deleted_alone = replaced.model_copy(update={"replaced_by_request_id": None})
    assert not repeats_mutation(deleted_alone, new_request)


@pytest.mark.parametrize("state", list(TurnState))
@pytest.mark.parametrize("deleted", [False, True])
def test_purgeable_means_terminal_and_ended_before_the_cutoff(
    state: TurnState, deleted: bool
) -> None:
    turn = _example_turn(UUID(int=1), state=state, deleted=deleted)
    if not state.is_terminal:
        assert not is_purgeable(turn, _T0 + timedelta(days=999), 0)
        return
    assert turn.completed_at is not None
    assert is_purgeable(turn, turn.completed_at, 0)
    assert is_purgeable(turn, turn.completed_at + timedelta(seconds=60), 60)
    assert not is_purgeable(turn, turn.completed_at + timedelta(seconds=59), 60)
    assert purge_cutoff(_T0, 60) == _T0 - timedelta(seconds=60)


def test_a_running_turn_is_never_purgeable_whatever_its_timestamps() -> None:
    """The schema keeps completed_at empty while a turn runs; the rule does not rely on it
    (and the SQL needs ``state <> 'running'`` to use the retention index)."""
    odd = _example_turn(UUID(int=1), state=RUNNING).model_copy(update={"completed_at": _T0})
    assert not is_purgeable(odd, _T0 + timedelta(days=999), 0)
