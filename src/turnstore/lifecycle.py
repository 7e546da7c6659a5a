"""The rules around a turn (docs/design.md, *Starting a turn* to *Orphans and the watchdog*): start
or replay, keep-alive, finalize, and retry, edit or delete of the last turn.

``TurnLifecycle`` is written against the ``TurnStore`` protocol only, so the same code runs on
PostgreSQL and on the in-memory fake. Every operation either opens what it needs from the
store or runs on a runner the host passes (``runner=...``), so the host can put its own
writes (messages, quota, outbox) in the same transaction as the turn transition.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import Generic
from uuid import UUID

from turnstore.errors import (
    DuplicateRequestError,
    DuplicateTurnIdError,
    GenerationInProgressError,
    NotLatestTurnError,
)
from turnstore.ids import new_uuid7
from turnstore.keepalive import KeepAlive
from turnstore.model import (
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    RequesterType,
    Turn,
    TurnState,
)
from turnstore.repository import RunnerT, TurnRepository, TurnStore
from turnstore.rules import (
    StartDecision,
    decide_start,
    mutation_rejection,
)
from turnstore.scope import AccessScope
from turnstore.settings import KeepAliveSettings

__all__ = [
    "FinalizeHook",
    "FinalizeOutcome",
    "KeepAlive",
    "KeepAliveSettings",
    "MutationHook",
    "MutationKind",
    "MutationResult",
    "RejectReason",
    "StartKind",
    "StartOutcome",
    "TurnLifecycle",
    "new_uuid7",
]

#: How many times ``begin_turn`` re-inserts when the running turn that refused its insert
#: has already ended by the time it is looked up.
_START_ATTEMPTS = 3
#: The scope of the locked read of a chat's latest turn in retry/edit/delete.
_WHOLE_CHAT = AccessScope.allow_all()


# --------------------------------------------------------------------------- start


class StartKind(str, Enum):
    """What ``begin_turn`` did: ``started`` a new running turn, a ``replay`` of a completed
    one (nothing written), or ``rejected`` the request (see ``RejectReason``)."""

    STARTED = "started"
    REPLAY = "replay"
    REJECTED = "rejected"


class RejectReason(str, Enum):
    """Why ``begin_turn`` refused to start a turn (docs/design.md, *Starting a turn*).

    - ``request_id_conflict``: the request id is taken by a turn that is not a completed,
      non-deleted one (running, failed, cancelled or deleted), or by a turn outside the
      caller's scope; decided before ``generation_in_progress``, so a resend of a request
      still running gets this, with that running turn.
    - ``generation_in_progress``: the request id is new, but another turn of the chat is
      running; ``StartOutcome.running_turn_id`` names it when known.
    """

    REQUEST_ID_CONFLICT = "request_id_conflict"
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


def _outcome_of(decision: StartDecision, existing: Turn) -> StartOutcome:
    """The outcome for a request whose idempotency key is already taken by ``existing``."""
    if decision is StartDecision.REPLAY:
        return StartOutcome(StartKind.REPLAY, turn=existing)
    return StartOutcome(StartKind.REJECTED, turn=existing, reason=RejectReason.REQUEST_ID_CONFLICT)


def _generation_in_progress(running: Turn | None, running_turn_id: UUID | None) -> StartOutcome:
    return StartOutcome(
        StartKind.REJECTED,
        turn=running,
        reason=RejectReason.GENERATION_IN_PROGRESS,
        running_turn_id=running.id if running is not None else running_turn_id,
    )


# --------------------------------------------------------------------------- finalize

#: A host hook run inside the finalizing transaction, only by the caller that won the CAS;
#: it receives the runner and the turn as the transition left it. Raising rolls back.
FinalizeHook = Callable[[RunnerT, Turn], Awaitable[None]]


@dataclass(frozen=True)
class FinalizeOutcome:
    """Whether this caller won the finalizing CAS.

    ``turn`` is the finalized row, read in the same transaction, when a hook was given and
    the CAS was won (the hook receives the same row); otherwise ``None``, which saves a
    round trip on the common path.
    """

    turn_id: UUID
    state: TurnState
    won: bool
    turn: Turn | None = None


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
    ``new_turn`` is the new running turn and ``new_request_id`` its server-generated
    request id (also written to the target's ``replaced_by_request_id``).
    """

    kind: MutationKind
    target: Turn
    new_turn: Turn | None = None
    new_request_id: UUID | None = None


#: A host hook run inside the mutation's transaction after the turn writes.
MutationHook = Callable[[RunnerT, MutationResult], Awaitable[None]]


# --------------------------------------------------------------------------- lifecycle


class TurnLifecycle(Generic[RunnerT]):
    """The lifecycle rules of docs/design.md over one ``TurnStore``.

    Every method takes an optional ``runner``: when given, the work runs on it (inside the
    host's transaction, if the host opened one) and the host commits or rolls back; when
    omitted, the method opens what it needs from the store (a transaction where several
    statements must be atomic, an autocommit connection where one statement is enough).
    """

    def __init__(
        self, store: TurnStore[RunnerT], *, keep_alive: KeepAliveSettings | None = None
    ) -> None:
        self._store = store
        self._keep_alive = keep_alive if keep_alive is not None else KeepAliveSettings()

    @property
    def store(self) -> TurnStore[RunnerT]:
        """The store every operation runs on."""
        return self._store

    @property
    def turns(self) -> TurnRepository[RunnerT]:
        """The store's repository."""
        return self._store.turns

    @property
    def keep_alive_settings(self) -> KeepAliveSettings:
        """The settings ``keep_alive`` uses unless given others."""
        return self._keep_alive

    def _on(self, runner: RunnerT | None, *, atomic: bool) -> AbstractAsyncContextManager[RunnerT]:
        if runner is not None:
            return nullcontext(runner)
        return self._store.transaction() if atomic else self._store.connection()

    # ---- start

    async def begin_turn(
        self, scope: AccessScope, params: CreateTurnParams, *, runner: RunnerT | None = None
    ) -> StartOutcome:
        """Start a turn, replay a completed one, or say why not (docs/design.md, *Starting a turn*).

        The insert is tried first: it succeeds exactly when step 1 (the request id is new) and step
        2 (no running turn in the chat) both hold, because the two unique indexes enforce them, so
        the common path is one statement. When the insert is refused, the steps are applied in the
        order of *Starting a turn* on fresh reads: a taken request id decides first (replay or
        ``request_id_conflict``), even while another turn runs; only then
        ``generation_in_progress``.
        """
        async with self._on(runner, atomic=False) as run:
            refused: GenerationInProgressError | None = None
            for _ in range(_START_ATTEMPTS):
                try:
                    turn = await self.turns.create_turn(run, scope, params)
                except (
                    DuplicateRequestError,
                    GenerationInProgressError,
                    DuplicateTurnIdError,
                ) as exc:
                    existing = await self.turns.find_by_chat_and_request_id(
                        run, scope, params.chat_id, params.request_id
                    )
                    if existing is not None:
                        return _outcome_of(decide_start(existing, None), existing)
                    if isinstance(exc, DuplicateTurnIdError):
                        raise
                    if isinstance(exc, DuplicateRequestError):
                        # The key is taken by a turn outside the caller's scope.
                        return StartOutcome(
                            StartKind.REJECTED, reason=RejectReason.REQUEST_ID_CONFLICT
                        )
                    running = await self.turns.find_running_by_chat_id(run, scope, params.chat_id)
                    if running is not None:
                        return _generation_in_progress(running, exc.running_turn_id)
                    # The running turn ended between the insert and the read: try again.
                    refused = exc
                    continue
                return StartOutcome(StartKind.STARTED, turn=turn)
            assert refused is not None
            return _generation_in_progress(None, refused.running_turn_id)

    # ---- keep-alive

    def keep_alive(
        self,
        scope: AccessScope,
        turn_id: UUID,
        *,
        settings: KeepAliveSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> KeepAlive[RunnerT]:
        """A ``KeepAlive`` for one running turn (see ``KeepAlive``); ``clock`` is the
        monotonic clock that paces the writes."""
        return KeepAlive(self._store, scope, turn_id, settings or self._keep_alive, clock=clock)

    # ---- finalize

    async def complete_turn(
        self,
        scope: AccessScope,
        turn: Turn,
        assistant_message_id: UUID,
        *,
        provider_response_id: str | None = None,
        hook: FinalizeHook[RunnerT] | None = None,
        runner: RunnerT | None = None,
    ) -> FinalizeOutcome:
        """CAS ``running -> completed``; the assistant message id is required, because a
        completed turn must be replayable."""
        params = CasCompleteParams(
            turn_id=turn.id,
            assistant_message_id=assistant_message_id,
            provider_response_id=provider_response_id,
        )

        async def cas(run: RunnerT) -> int:
            return await self.turns.cas_update_completed(run, scope, params)

        return await self._finalize(scope, turn, TurnState.COMPLETED, cas, hook, runner)

    async def fail_turn(
        self,
        scope: AccessScope,
        turn: Turn,
        error_code: str,
        error_detail: str | None = None,
        *,
        hook: FinalizeHook[RunnerT] | None = None,
        runner: RunnerT | None = None,
    ) -> FinalizeOutcome:
        """CAS ``running -> failed`` with an error code (1..64 chars) and optional detail."""
        params = CasTerminalParams(
            turn_id=turn.id,
            state=TurnState.FAILED,
            error_code=error_code,
            error_detail=error_detail,
        )
        return await self._finalize_state(scope, turn, params, hook, runner)

    async def cancel_turn(
        self,
        scope: AccessScope,
        turn: Turn,
        *,
        partial_message_id: UUID | None = None,
        hook: FinalizeHook[RunnerT] | None = None,
        runner: RunnerT | None = None,
    ) -> FinalizeOutcome:
        """CAS ``running -> cancelled``, linking the partial answer's message if one was kept."""
        params = CasTerminalParams(
            turn_id=turn.id, state=TurnState.CANCELLED, assistant_message_id=partial_message_id
        )
        return await self._finalize_state(scope, turn, params, hook, runner)

    async def _finalize_state(
        self,
        scope: AccessScope,
        turn: Turn,
        params: CasTerminalParams,
        hook: FinalizeHook[RunnerT] | None,
        runner: RunnerT | None,
    ) -> FinalizeOutcome:
        async def cas(run: RunnerT) -> int:
            return await self.turns.cas_update_state(run, scope, params)

        return await self._finalize(scope, turn, params.state, cas, hook, runner)

    async def _finalize(
        self,
        scope: AccessScope,
        turn: Turn,
        state: TurnState,
        cas: Callable[[RunnerT], Awaitable[int]],
        hook: FinalizeHook[RunnerT] | None,
        runner: RunnerT | None,
    ) -> FinalizeOutcome:
        # Without a hook the CAS is the only statement: autocommit saves BEGIN and COMMIT.
        async with self._on(runner, atomic=hook is not None) as run:
            won = await cas(run) == 1
            if not won or hook is None:
                return FinalizeOutcome(turn.id, state, won)
            final = await self.turns.find_by_chat_and_request_id(
                run, scope, turn.chat_id, turn.request_id
            )
            assert final is not None, "the finalized turn is in scope: the CAS just saw it"
            await hook(run, final)
            return FinalizeOutcome(turn.id, state, True, final)

    # ---- retry, edit, delete

    async def retry_turn(
        self,
        scope: AccessScope,
        chat_id: UUID,
        request_id: UUID,
        actor_user_id: UUID | None,
        *,
        new_turn_id: UUID | None = None,
        hook: MutationHook[RunnerT] | None = None,
        runner: RunnerT | None = None,
    ) -> MutationResult:
        """Replace the chat's last turn by a new running turn with a new request id."""
        return await self._mutate(
            MutationKind.RETRY, scope, chat_id, request_id, actor_user_id, new_turn_id, hook, runner
        )

    async def edit_turn(
        self,
        scope: AccessScope,
        chat_id: UUID,
        request_id: UUID,
        actor_user_id: UUID | None,
        *,
        new_turn_id: UUID | None = None,
        hook: MutationHook[RunnerT] | None = None,
        runner: RunnerT | None = None,
    ) -> MutationResult:
        """Like ``retry_turn``; the host writes the edited user message in the same
        transaction (through ``hook`` or its own ``runner``)."""
        return await self._mutate(
            MutationKind.EDIT, scope, chat_id, request_id, actor_user_id, new_turn_id, hook, runner
        )

    async def delete_turn(
        self,
        scope: AccessScope,
        chat_id: UUID,
        request_id: UUID,
        actor_user_id: UUID | None,
        *,
        hook: MutationHook[RunnerT] | None = None,
        runner: RunnerT | None = None,
    ) -> MutationResult:
        """Soft-delete the chat's last turn."""
        return await self._mutate(
            MutationKind.DELETE, scope, chat_id, request_id, actor_user_id, None, hook, runner
        )

    async def _mutate(
        self,
        kind: MutationKind,
        scope: AccessScope,
        chat_id: UUID,
        request_id: UUID,
        actor_user_id: UUID | None,
        new_turn_id: UUID | None,
        hook: MutationHook[RunnerT] | None,
        runner: RunnerT | None,
    ) -> MutationResult:
        async with self._on(runner, atomic=True) as run:
            # Lock the chat first: every check below then reads the state the previous
            # mutation of this chat committed, never an older snapshot.
            # "Is it the last turn?" is asked of the whole chat, not of what the caller's
            # scope shows: a scope naming one turn must not make an older turn look last.
            latest = await self.turns.find_latest_for_update(run, _WHOLE_CHAT, chat_id)
            if latest is not None and latest.request_id == request_id and scope.permits(latest):
                target: Turn | None = latest
            else:
                target = await self.turns.find_by_chat_and_request_id(
                    run, scope, chat_id, request_id
                )
            rejection = mutation_rejection(
                target, latest, actor_user_id, chat_id=chat_id, request_id=request_id
            )
            if isinstance(rejection, NotLatestTurnError) and not (
                latest is not None and scope.permits(latest)
            ):
                # Say that the target is not the last turn, but not which turn is.
                rejection = NotLatestTurnError(rejection.turn_id, None)
            if rejection is not None:
                raise rejection
            assert target is not None
            if kind is MutationKind.DELETE:
                await self.turns.soft_delete(run, scope, target.id, None)
                result = MutationResult(kind, target)
            else:
                new_request_id = new_uuid7()
                # Insert before deleting: if the insert collides (a turn was started in the
                # chat meanwhile), nothing has been written yet.
                new_turn = await self.turns.create_turn(
                    run,
                    scope,
                    CreateTurnParams(
                        id=new_turn_id or new_uuid7(),
                        tenant_id=target.tenant_id,
                        chat_id=chat_id,
                        request_id=new_request_id,
                        requester_type=RequesterType.USER,
                        requester_user_id=actor_user_id,
                        provider_name=target.provider_name,
                        web_search_enabled=target.web_search_enabled,
                    ),
                )
                await self.turns.soft_delete(run, scope, target.id, new_request_id)
                result = MutationResult(kind, target, new_turn, new_request_id)
            if hook is not None:
                await hook(run, result)
            return result
