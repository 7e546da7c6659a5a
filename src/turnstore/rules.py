"""The rules of a turn as pure functions (docs/design.md: *States and transitions*, *Starting a
turn*, *Retry, edit and delete*).

These are the single source of truth: the in-memory fake calls them to decide, the SQL of
the PostgreSQL backend mirrors them predicate for predicate, and property tests exercise
them directly. Nothing here does I/O or reads a clock: time is always an argument.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from datetime import datetime, timedelta
from enum import Enum
from uuid import UUID

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
from turnstore.model import CreateTurnParams, ToolCallType, Turn, TurnState

__all__ = [
    "MAX_INSERT_ATTEMPTS",
    "MAX_RELOCKS",
    "ORPHAN_ERROR_CODE",
    "StartDecision",
    "can_transition",
    "check_tool",
    "decide_start",
    "fingerprint_conflicts",
    "holds_running_slot",
    "insert_refusal",
    "is_live",
    "is_orphan",
    "latest_sort_key",
    "mutation_rejection",
    "orphan_cutoff",
    "orphan_sort_key",
    "pick_latest",
    "preflight_update_applies",
    "progress_update_applies",
    "purge_cutoff",
    "is_purgeable",
    "repeats_mutation",
    "terminal_cas_applies",
    "tool_increment_applies",
]

#: The ``error_code`` the watchdog writes when it fails an orphaned turn.
ORPHAN_ERROR_CODE = "orphan_timeout"

#: How many times ``find_latest_for_update`` reads and locks a chat's latest turn again
#: after the turn it locked turned out not to be the latest any more. The chat lock keeps
#: the lifecycle's own writers out, so only a writer that bypasses it (a host statement, a
#: repository call outside the lifecycle) can replace the turn being waited on; each round
#: reads a fresh snapshot, so the loop ends as soon as such writes stop. The bound keeps an
#: endless stream of them from holding the caller forever: past it, the turn locked last
#: is returned.
MAX_RELOCKS = 8

#: How many times ``create_turn`` inserts again when a unique index refused the row but,
#: by the time the refusal is classified, the conflicting row is gone (its transaction
#: rolled back, or the running turn was finalized meanwhile). Past it the chat is taken to
#: be busy with turns that come and go, and the insert is refused as
#: ``generation_in_progress``.
MAX_INSERT_ATTEMPTS = 8

_TOOLS = frozenset(ToolCallType)


def can_transition(current: TurnState, target: TurnState) -> bool:
    """Only ``running -> completed | failed | cancelled``; nothing leaves a terminal state."""
    return current is TurnState.RUNNING and target.is_terminal


def terminal_cas_applies(turn: Turn) -> bool:
    """Does a finalizing CAS (``cas_update_state`` / ``cas_update_completed``) hit this row?

    The predicate is ``state = 'running'`` (and the caller's scope, checked separately).
    """
    return turn.state is TurnState.RUNNING


def progress_update_applies(turn: Turn) -> bool:
    """``update_progress_at`` touches a turn only while it runs."""
    return turn.state is TurnState.RUNNING


def preflight_update_applies(turn: Turn) -> bool:
    """``update_preflight_fields`` writes a turn only while it runs."""
    return turn.state is TurnState.RUNNING


def tool_increment_applies(turn: Turn) -> bool:
    """``increment_tool_calls`` counts only on a running, non-deleted turn."""
    return turn.state is TurnState.RUNNING and turn.deleted_at is None


def is_live(turn: Turn) -> bool:
    """Not soft-deleted: still part of the conversation, a candidate for "latest turn"."""
    return turn.deleted_at is None


def holds_running_slot(turn: Turn) -> bool:
    """Running and not deleted: the one turn a chat may have generating at a time.

    The partial unique index ``chat_turns_one_running_per_chat`` holds exactly these
    rows, and ``find_running_by_chat_id`` returns one of them.
    """
    return turn.state is TurnState.RUNNING and turn.deleted_at is None


def orphan_cutoff(now: datetime, timeout_secs: int) -> datetime:
    """Progress at or before this instant is stale."""
    return now - timedelta(seconds=timeout_secs)


def is_orphan(turn: Turn, now: datetime, timeout_secs: int) -> bool:
    """Running, not deleted, and no progress for at least ``timeout_secs`` at ``now``.

    This is both the scan predicate and the re-check inside ``cas_finalize_orphan``.
    """
    return (
        turn.state is TurnState.RUNNING
        and turn.deleted_at is None
        and turn.last_progress_at is not None
        and turn.last_progress_at <= orphan_cutoff(now, timeout_secs)
    )


def orphan_sort_key(turn: Turn) -> tuple[datetime, UUID]:
    """Orphan candidates come oldest progress first, ties broken by id."""
    assert turn.last_progress_at is not None
    return (turn.last_progress_at, turn.id)


def latest_sort_key(turn: Turn) -> tuple[datetime, UUID]:
    """The latest turn of a chat has the greatest ``(started_at, id)``."""
    return (turn.started_at, turn.id)


def pick_latest(turns: Iterable[Turn]) -> Turn | None:
    """The latest non-deleted turn among ``turns`` (all of one chat), or ``None``."""
    live = [t for t in turns if t.deleted_at is None]
    return max(live, key=latest_sort_key, default=None)


class StartDecision(str, Enum):
    """What a new request for a turn gets (docs/design.md, *Starting a turn*)."""

    START = "start"
    REPLAY = "replay"
    REQUEST_ID_CONFLICT = "request_id_conflict"
    REQUEST_IN_PROGRESS = "request_in_progress"
    REQUEST_FINGERPRINT_MISMATCH = "request_fingerprint_mismatch"
    GENERATION_IN_PROGRESS = "generation_in_progress"


def fingerprint_conflicts(stored: str | None, given: str | None) -> bool:
    """Does a resend with fingerprint ``given`` ask for something else than the turn that
    stored ``stored``? Only when both are known and differ: a request sent without a
    fingerprint, or a turn stored without one, has nothing to compare."""
    return stored is not None and given is not None and stored != given


def decide_start(
    existing: Turn | None, running: Turn | None, fingerprint: str | None = None
) -> StartDecision:
    """Decide a start from the turn already holding ``(chat_id, request_id)``, if any, the
    chat's running turn, if any, and the new request's fingerprint, if given.

    The order is normative: the idempotency key is looked at first, so a reconnecting
    client replays its completed answer even while another turn of the chat runs. Within
    the key: another fingerprint is refused before anything else (a different request must
    never get this key's answer); then a completed, live turn replays; a running, live one
    is ``request_in_progress`` (the same request, still generating: ask again later); any
    other holder (failed, cancelled, deleted) is a genuine ``request_id_conflict``.
    """
    if existing is not None:
        if fingerprint_conflicts(existing.request_fingerprint, fingerprint):
            return StartDecision.REQUEST_FINGERPRINT_MISMATCH
        if existing.deleted_at is None:
            if existing.state is TurnState.COMPLETED:
                return StartDecision.REPLAY
            if existing.state is TurnState.RUNNING:
                return StartDecision.REQUEST_IN_PROGRESS
        return StartDecision.REQUEST_ID_CONFLICT
    if running is not None:
        return StartDecision.GENERATION_IN_PROGRESS
    return StartDecision.START


def repeats_mutation(target: Turn, new_request_id: UUID | None) -> bool:
    """Is a retry or edit of ``target`` asking for ``new_request_id`` one that already
    happened? True when ``target`` was already replaced by the turn of that request id
    (docs/design.md, *Retry, edit and delete*): the repeat then gets what a start with
    ``new_request_id`` gets, instead of ``not_latest_turn``."""
    return (
        new_request_id is not None
        and target.deleted_at is not None
        and target.replaced_by_request_id == new_request_id
    )


def purge_cutoff(now: datetime, older_than_secs: int) -> datetime:
    """Turns that ended at or before this instant are old enough to purge."""
    return now - timedelta(seconds=older_than_secs)


def is_purgeable(turn: Turn, now: datetime, older_than_secs: int) -> bool:
    """Retention deletes a turn once it is terminal (deleted or not) and ended at least
    ``older_than_secs`` before ``now``; a running turn never, even when soft-deleted."""
    return (
        turn.state is not TurnState.RUNNING
        and turn.completed_at is not None
        and turn.completed_at <= purge_cutoff(now, older_than_secs)
    )


def insert_refusal(
    params: CreateTurnParams,
    *,
    permitted: bool = True,
    id_taken: bool = False,
    existing_id: UUID | None = None,
    running_id: UUID | None = None,
    visible: Container[UUID] = frozenset(),
) -> TurnStoreError | None:
    """The error that refuses inserting ``params``, or ``None`` when nothing is in the way.

    The inputs say which conflicts exist: ``permitted`` is whether the caller's scope
    permits the new row, ``id_taken`` whether a row already has ``params.id``,
    ``existing_id`` the turn holding ``(chat_id, request_id)`` and ``running_id`` the
    chat's running turn, if any; ``visible`` holds the ids the caller's scope permits.
    When several conflicts exist, one refusal wins, in this order:

    1. ``ScopeDeniedError``: a row the scope does not permit is refused before any index is
       consulted, so a caller cannot learn which ids or keys exist outside its scope;
    2. ``DuplicateTurnIdError``: the primary key, the index PostgreSQL checks first;
    3. ``DuplicateRequestError``: the idempotency key, before the running turn, as in
       ``decide_start``, so a reconnecting client hears about its own request even while
       another turn of the chat runs;
    4. ``GenerationInProgressError``: the chat's one running turn.

    An error names the conflicting turn only when its id is in ``visible``.
    """
    if not permitted:
        return ScopeDeniedError(params.id, params.tenant_id)
    if id_taken:
        return DuplicateTurnIdError(params.id)
    if existing_id is not None:
        shown = existing_id if existing_id in visible else None
        return DuplicateRequestError(params.chat_id, params.request_id, shown)
    if running_id is not None:
        shown = running_id if running_id in visible else None
        return GenerationInProgressError(params.chat_id, shown)
    return None


def check_tool(tool: object) -> ToolCallType:
    """The ``ToolCallType`` whose counter ``increment_tool_calls`` bumps, or
    ``InvalidParameterError``: a member, or its string value (the enum is a ``str``)."""
    try:
        known = tool in _TOOLS
    except TypeError:  # unhashable: certainly not a tool
        known = False
    if not known:
        raise InvalidParameterError(f"tool must be a ToolCallType, got {tool!r}")
    return ToolCallType(tool)


def mutation_rejection(
    target: Turn | None,
    latest: Turn | None,
    actor_user_id: UUID | None,
    *,
    chat_id: UUID,
    request_id: UUID,
) -> TurnStoreError | None:
    """Why retry/edit/delete of ``target`` must be refused, or ``None`` if it may go on.

    Checks in the order of docs/design.md, *Retry, edit and delete*: missing, not the actor's, still
    running, not the latest turn of the chat. ``latest`` must be the chat's latest turn read under
    the chat's lock *whatever the caller's scope*: a narrow scope (one turn) must not make an older
    turn look like the last one. A deleted target exists (the idempotency key still holds it) but is
    never the latest, so a mutation aimed at it, typically the loser of two concurrent mutations, is
    the conflict ``not_latest_turn``.
    """
    if target is None:
        return TurnNotFoundError(chat_id=chat_id, request_id=request_id)
    if target.requester_user_id is None or target.requester_user_id != actor_user_id:
        return ForbiddenError(target.id, actor_user_id)
    if target.state is TurnState.RUNNING:
        return InvalidTurnStateError(target.id, target.state.value)
    if target.deleted_at is not None or latest is None or latest.id != target.id:
        return NotLatestTurnError(target.id, latest.id if latest is not None else None)
    return None
