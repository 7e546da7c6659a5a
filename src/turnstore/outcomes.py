"""What the lifecycle's calls return: the outcome of a start, of a finalize, of a
retry/edit/delete, and why a start was refused (docs/lifecycle.md). Plain values, shared
by the async and the generated sync lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from uuid import UUID

from turnstore.errors import (
    DuplicateRequestError,
    GenerationInProgressError,
    RequestFingerprintMismatchError,
    RequestInProgressError,
    TurnStoreError,
)
from turnstore.model import Turn, TurnState
from turnstore.rules import StartDecision

__all__ = [
    "FinalizeOutcome",
    "MutationKind",
    "MutationResult",
    "RejectReason",
    "StartKind",
    "StartOutcome",
]


# --------------------------------------------------------------------------- start


class StartKind(str, Enum):
    """What ``begin_turn`` did: ``started`` a new running turn, a ``replay`` of a completed
    one (nothing written), or ``rejected`` the request (see ``RejectReason``)."""

    STARTED = "started"
    REPLAY = "replay"
    REJECTED = "rejected"


class RejectReason(str, Enum):
    """Why ``begin_turn`` refused to start a turn (docs/lifecycle.md, *Why a start is
    refused*), in the order the start decides.

    - ``request_fingerprint_mismatch``: the request id's turn was started with another
      request fingerprint (the same key for another request body).
    - ``request_in_progress``: the request id's turn is still running: a resend of a
      request not finished yet; retrying later helps.
    - ``request_id_conflict``: the request id is taken by a turn that cannot be replayed
      (failed, cancelled, deleted, or outside the caller's scope): a genuine key conflict.
    - ``generation_in_progress``: the request id is new, but another turn of the chat is
      running; ``StartOutcome.running_turn_id`` names it when known.
    """

    #: The request id is taken by a turn that cannot be replayed (failed, cancelled,
    #: deleted, or outside the caller's scope): a genuine key conflict.
    REQUEST_ID_CONFLICT = "request_id_conflict"
    #: The request id's turn is still running: a resend of a request not finished yet.
    REQUEST_IN_PROGRESS = "request_in_progress"
    #: The request id's turn was started with another request fingerprint.
    REQUEST_FINGERPRINT_MISMATCH = "request_fingerprint_mismatch"
    #: Another turn of the chat is running.
    GENERATION_IN_PROGRESS = "generation_in_progress"


@dataclass(frozen=True)
class StartOutcome:
    """The outcome of ``begin_turn``.

    - ``started``: ``turn`` is the new running turn.
    - ``replay``: ``turn`` is the completed turn of this request; nothing was written.
    - ``rejected``: ``reason`` says why; ``turn`` is the turn in the way when the caller's
      scope can see it (the turn holding the request id, or the running turn), and
      ``running_turn_id`` names the running turn for ``generation_in_progress`` when known.
    """

    kind: StartKind
    turn: Turn | None = None
    reason: RejectReason | None = None
    running_turn_id: UUID | None = None

    @property
    def started(self) -> bool:
        """``kind is StartKind.STARTED``."""
        return self.kind is StartKind.STARTED

    @property
    def replayed(self) -> bool:
        """``kind is StartKind.REPLAY``."""
        return self.kind is StartKind.REPLAY

    @property
    def rejected(self) -> bool:
        """``kind is StartKind.REJECTED``."""
        return self.kind is StartKind.REJECTED

    def error(self, chat_id: UUID, request_id: UUID) -> TurnStoreError | None:
        """The typed error for a rejection (``None`` unless rejected), for a host that
        raises instead of branching: each ``RejectReason`` has its own class and ``code``."""
        if self.reason is None:
            return None
        shown = self.turn.id if self.turn is not None else None
        if self.reason is RejectReason.GENERATION_IN_PROGRESS:
            return GenerationInProgressError(chat_id, self.running_turn_id)
        if self.reason is RejectReason.REQUEST_IN_PROGRESS:
            return RequestInProgressError(chat_id, request_id, shown)
        if self.reason is RejectReason.REQUEST_FINGERPRINT_MISMATCH:
            return RequestFingerprintMismatchError(chat_id, request_id, shown)
        return DuplicateRequestError(chat_id, request_id, shown)


_KEY_REASONS = {
    StartDecision.REQUEST_ID_CONFLICT: RejectReason.REQUEST_ID_CONFLICT,
    StartDecision.REQUEST_IN_PROGRESS: RejectReason.REQUEST_IN_PROGRESS,
    StartDecision.REQUEST_FINGERPRINT_MISMATCH: RejectReason.REQUEST_FINGERPRINT_MISMATCH,
}


def outcome_of(decision: StartDecision, existing: Turn) -> StartOutcome:
    """The outcome for a request whose idempotency key is already taken by ``existing``."""
    if decision is StartDecision.REPLAY:
        return StartOutcome(StartKind.REPLAY, turn=existing)
    return StartOutcome(StartKind.REJECTED, turn=existing, reason=_KEY_REASONS[decision])


def generation_in_progress_outcome(
    running: Turn | None, running_turn_id: UUID | None
) -> StartOutcome:
    return StartOutcome(
        StartKind.REJECTED,
        turn=running,
        reason=RejectReason.GENERATION_IN_PROGRESS,
        running_turn_id=running.id if running is not None else running_turn_id,
    )


# --------------------------------------------------------------------------- finalize


@dataclass(frozen=True)
class FinalizeOutcome:
    """Whether this caller won the finalizing CAS, and the turn's state after the call.

    ``state`` is the turn's state, not the one asked for: the new state when ``won``, else
    the state the losing call found (e.g. ``cancelled`` for a late ``complete_turn`` on a
    cancelled turn), read after the CAS matched no row (a turn that no longer exists in the
    caller's scope, purged or erased, raises ``TurnNotFoundError`` instead). Only a call that
    won may commit the host's writes that go with the transition (the assistant message, the
    quota).

    ``turn`` is the finalized row, read in the same transaction, when a hook was given and
    the CAS was won (the hook receives the same row), or the row the losing call read;
    otherwise ``None``, which saves a round trip on the common, winning path.
    """

    turn_id: UUID
    state: TurnState
    won: bool
    turn: Turn | None = None


#: The span of each finalizing call, by the state it moves the turn to.
FINALIZE_SPANS = {
    TurnState.COMPLETED: "turnstore.complete_turn",
    TurnState.FAILED: "turnstore.fail_turn",
    TurnState.CANCELLED: "turnstore.cancel_turn",
}


# --------------------------------------------------------------------------- mutations


class MutationKind(str, Enum):
    """Which mutation of a chat's last turn a ``MutationResult`` reports."""

    RETRY = "retry"
    EDIT = "edit"
    DELETE = "delete"


@dataclass(frozen=True)
class MutationResult:
    """A successful retry, edit or delete of a chat's last turn.

    ``target`` is the turn as it was before being soft-deleted. For retry and edit,
    ``new_turn`` is the new running turn and ``new_request_id`` its request id (the
    caller's ``new_request_id=``, else one the server generated; also written to the
    target's ``replaced_by_request_id``).

    ``repeated`` is set when a retry or edit with the same ``new_request_id`` already
    replaced the target (docs/design.md, *Retry, edit and delete*): nothing was written, no
    hook ran, and ``repeated`` is what ``begin_turn`` with ``new_request_id`` gets (replay
    of the completed new turn, ``request_in_progress`` while it runs, ...); ``new_turn`` is
    that turn as it is now.
    """

    kind: MutationKind
    target: Turn
    new_turn: Turn | None = None
    new_request_id: UUID | None = None
    repeated: StartOutcome | None = None
